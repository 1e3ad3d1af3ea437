"""Bulk member match jobs and the partner-owned Groups they produce."""

from __future__ import annotations

import uuid

from django.db import models

from pdex.jobs.models import AsyncJob, WorkUnit
from pdex.models import Member, Partner


def new_group_id() -> str:
    return uuid.uuid4().hex


class MatchJob(AsyncJob):
    """A $bulk-member-match request; each MemberBundle is one MatchEntry, matched independently."""

    matched = models.PositiveIntegerField(default=0)
    no_match = models.PositiveIntegerField(default=0)
    consent_constrained = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"bulk-member-match {self.id}"


class MatchBatch(WorkUnit):
    """A slice of a match job's entries ([start, end) by index): the unit a worker leases, matches and records
    in one transaction, so a killed worker's batch is redone whole and no entry is decided twice."""

    job = models.ForeignKey(MatchJob, on_delete=models.CASCADE, related_name="batches")
    start = models.PositiveIntegerField()
    end = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "sequence"], name="matchbatch_job_seq_uniq")]
        # The claim's probe for a job's next unit due skips the done ones (pdex.jobs.engine.claim).
        indexes = [models.Index(fields=["job", "sequence"], name="matchbatch_open",
                                condition=models.Q(status__in=["pending", "running"]))]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.sequence} [{self.start}, {self.end})"


class MatchEntry(models.Model):
    """One submitted MemberBundle and what became of it."""

    class Outcome(models.TextChoices):
        PENDING = "pending"
        MATCHED = "match"
        NO_MATCH = "nomatch"
        CONSENT_CONSTRAINED = "consentconstraint"

    job = models.ForeignKey(MatchJob, on_delete=models.CASCADE, related_name="entries")
    index = models.PositiveIntegerField(help_text="position in the request")
    bundle = models.JSONField(help_text="the MemberBundle parameter as submitted")
    outcome = models.CharField(max_length=24, choices=Outcome.choices, default=Outcome.PENDING, db_index=True)
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True, help_text="for the log and admins; never put in a Group")

    class Meta:
        verbose_name_plural = "match entries"
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="matchentry_job_index_uniq")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.index} {self.outcome}"


class MemberMatchGroup(models.Model):
    """A Group produced by bulk member match, owned by the partner that asked; only `match` is exportable."""

    class Code(models.TextChoices):
        MATCH = "match"
        NO_MATCH = "nomatch"
        CONSENT_CONSTRAINT = "consentconstraint"

    id = models.CharField(primary_key=True, max_length=64, default=new_group_id, editable=False)
    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="groups")
    job = models.ForeignKey(MatchJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="groups")
    code = models.CharField(max_length=24, choices=Code.choices, db_index=True)
    name = models.CharField(max_length=200, blank=True)
    identifier_system = models.CharField(max_length=200, blank=True)
    identifier_value = models.CharField(max_length=200, blank=True)
    resource = models.JSONField(help_text="the Group as FHIR JSON")
    version = models.PositiveIntegerField(default=1)
    members = models.ManyToManyField(Member, through="GroupMember", related_name="match_groups")
    created_at = models.DateTimeField(auto_now_add=True)
    last_updated = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["partner", "code"], name="group_partner_code")]

    def __str__(self) -> str:
        return f"Group/{self.id} ({self.code})"


class GroupMember(models.Model):
    group = models.ForeignKey(MemberMatchGroup, on_delete=models.CASCADE)
    member = models.ForeignKey(Member, on_delete=models.CASCADE)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "member"], name="groupmember_uniq")]

    def __str__(self) -> str:
        return f"{self.group_id} ∋ {self.member_id}"
