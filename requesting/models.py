"""The requesting side's records: our signing keys, the previous payers we ask, the consents we collect for
them, the links between their members and ours, and the pulls (jobs on the engine) that bring the data in."""

from __future__ import annotations

import uuid

from django.db import models

from pdex.jobs.models import JobState, WorkUnit
from pdex.models import Member


class SigningKey(models.Model):
    """One of our private keys for signing client assertions to other payers' token endpoints.

    A roll-over publishes the next key before it signs and keeps the old one published after it stops, so every
    payer that caches our JWKS can verify whichever key we sign with (requesting.keys).
    """

    class State(models.TextChoices):
        NEXT = "next", "next (published, not signing yet)"
        ACTIVE = "active", "active (signing)"
        RETIRED = "retired", "retired (published until withdrawn)"
        WITHDRAWN = "withdrawn", "withdrawn (gone from the JWKS)"

    kid = models.CharField(max_length=100, unique=True, help_text="RFC 7638 thumbprint")
    alg = models.CharField(max_length=8)
    state = models.CharField(max_length=16, choices=State.choices, db_index=True)
    public_jwk = models.JSONField()
    private_jwk_sealed = models.TextField(help_text="the private JWK, encrypted (Fernet) with a key derived from "
                                                    "P2P_KEY_ENCRYPTION_SECRET; empty once withdrawn")
    created_at = models.DateTimeField(auto_now_add=True)
    activate_after = models.DateTimeField(null=True, blank=True, help_text="a next key starts signing after this")
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    withdraw_after = models.DateTimeField(null=True, blank=True, help_text="a retired key leaves the JWKS after this")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kid[:12]}… ({self.alg}, {self.state})"


class PreviousPayer(models.Model):
    """Another health plan we ask for our new members' data: its FHIR base, what it serves, our client there."""

    class Registration(models.TextChoices):
        UNREGISTERED = "unregistered"
        DYNAMIC = "dcr", "dynamic registration (RFC 7591)"
        MANUAL = "manual", "client id entered by an admin"

    name = models.CharField(max_length=200)
    npi = models.CharField("NPI", max_length=10, unique=True,
                           help_text="how consents, coverages and the Groups name this payer")
    fhir_base_url = models.URLField(max_length=500, unique=True)
    member_id_system = models.CharField(max_length=300, blank=True,
                                        help_text="the identifier system of its member ids, when known (sent with "
                                                  "the old card's member id)")
    active = models.BooleanField(default=True, help_text="pulls are scheduled and run only for active payers")
    id_namespace = models.UUIDField(default=uuid.uuid4, editable=False,
                                    help_text="ids of resources received from this payer are derived in it")
    # What discovery found (/.well-known/smart-configuration and /metadata).
    token_endpoint = models.URLField(max_length=500, blank=True)
    registration_endpoint = models.URLField(max_length=500, blank=True)
    signing_algorithms = models.JSONField(default=list, blank=True)
    operations = models.JSONField(default=list, blank=True,
                                  help_text="operations its CapabilityStatement lists (member-match, …)")
    discovered_at = models.DateTimeField(null=True, blank=True)
    discovery_error = models.TextField(blank=True)
    # Our registration with it.
    registration = models.CharField(max_length=16, choices=Registration.choices, default=Registration.UNREGISTERED)
    client_id = models.CharField(max_length=200, blank=True)
    granted_scope = models.TextField(blank=True, help_text="the scope its registration response names")
    software_statement = models.TextField(blank=True, help_text="a statement from a trust framework, sent with a "
                                                                "dynamic registration when present")
    registered_at = models.DateTimeField(null=True, blank=True)
    last_token_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.npi})"

    @property
    def fhir_base(self) -> str:
        return self.fhir_base_url.rstrip("/")

    @property
    def can_pull(self) -> bool:
        return self.active and bool(self.client_id and self.token_endpoint)


class CollectedConsent(models.Model):
    """A member's consent, collected by us, for a previous payer to disclose their data to us (HRex Consent).

    One per (member, previous payer): a new consent replaces the old one. With it, the old-coverage facts the
    match needs (the member's old card) and the pull schedule's state.
    """

    class Policy(models.TextChoices):
        REGULAR = "regular", "#regular (non-sensitive data only)"
        SENSITIVE = "sensitive", "#sensitive (everything, sensitive data included)"

    class Scenario(models.TextChoices):
        ENROLLMENT = "enrollment", "enrollment (through 90 days after our coverage starts)"
        CONCURRENT = "concurrent", "concurrent coverage (through the end of the other plan's coverage)"

    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"

    class Role(models.TextChoices):
        HPOWATT = "HPOWATT", "healthcare power of attorney"
        DPOWATT = "DPOWATT", "durable power of attorney"
        GUARD = "GUARD", "guardian"

    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="collected_consents")
    previous_payer = models.ForeignKey(PreviousPayer, on_delete=models.PROTECT, related_name="consents")
    policy = models.CharField(max_length=16, choices=Policy.choices)
    scenario = models.CharField(max_length=16, choices=Scenario.choices, default=Scenario.ENROLLMENT)
    period_start = models.DateField()
    period_end = models.DateField()
    coverage_start = models.DateField(help_text="when the member's coverage with us starts")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    # The old card: what the previous payer matches on.
    old_member_id = models.CharField(max_length=64, blank=True, help_text="member id on the old card")
    old_subscriber_id = models.CharField(max_length=64, blank=True, help_text="subscriber id on the old card")
    old_relationship = models.CharField(max_length=16, default="self",
                                        help_text="subscriber-relationship code on the old card (self, child, …)")
    old_coverage_end = models.DateField(null=True, blank=True, help_text="end of the old coverage, when known")
    # Someone other than the member consented.
    representative_name = models.CharField(max_length=200, blank=True)
    representative_role = models.CharField(max_length=16, choices=Role.choices, blank=True)
    representative_relationship = models.CharField(max_length=16, blank=True,
                                                   help_text="v3-RoleCode of the relationship, e.g. DAU, SPS")
    resource = models.JSONField(help_text="the HRex Consent, as we send it in a member match")
    collected_via = models.CharField(max_length=16, help_text="admin or api")
    collected_by = models.CharField(max_length=200, blank=True)
    collected_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)
    # The pull schedule (requesting.schedule).
    last_pulled_at = models.DateTimeField(null=True, blank=True)
    last_transaction_time = models.DateTimeField(
        null=True, blank=True, help_text="transactionTime of the last export that brought this member's data: the "
                                         "next pull's _since")
    next_pull_at = models.DateTimeField(null=True, blank=True, db_index=True,
                                        help_text="empty: no pull is due (revoked, or the period has ended)")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["member", "previous_payer"],
                                               name="collected_consent_member_payer_uniq")]

    def __str__(self) -> str:
        return f"{self.member.umb} ← {self.previous_payer.name} ({self.policy}, {self.status})"


class MemberLink(models.Model):
    """Which of the previous payer's Patients is our member: learnt from its MatchedMembers Group."""

    previous_payer = models.ForeignKey(PreviousPayer, on_delete=models.CASCADE, related_name="links")
    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="previous_payer_links")
    their_patient_id = models.CharField(max_length=64)
    their_umb = models.CharField(max_length=64, blank=True, help_text="their unique member business identifier")
    linked_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["previous_payer", "member"], name="member_link_uniq")]

    def __str__(self) -> str:
        return f"{self.member.umb} = {self.previous_payer.name} Patient/{self.their_patient_id}"


class PullJob(JobState):
    """One pull from a previous payer: match our consented members there, export the matched ones, download,
    validate and ingest. Its stages run as units of work on the job engine (requesting.pull)."""

    class Stage(models.TextChoices):
        MATCH = "match"
        EXPORT = "export"
        DOWNLOAD = "download", "download and ingest"
        PROVENANCE = "provenance", "their Provenance"
        DONE = "done"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        ADMIN = "admin"
        COMMAND = "command"

    previous_payer = models.ForeignKey(PreviousPayer, on_delete=models.PROTECT, related_name="pulls")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.ADMIN)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.MATCH)
    since = models.DateTimeField(null=True, blank=True, help_text="_since of the export: empty for a first pull")
    single = models.BooleanField(default=False, help_text="one member: $member-match and Patient/$export")
    match_status_url = models.URLField(max_length=500, blank=True)
    matched_group_id = models.CharField(max_length=64, blank=True, help_text="their MatchedMembers Group")
    export_status_url = models.URLField(max_length=500, blank=True)
    export_manifest = models.JSONField(null=True, blank=True, help_text="their export manifest")
    export_transaction_time = models.DateTimeField(null=True, blank=True,
                                                   help_text="transactionTime of their export manifest")
    remote_progress = models.CharField(max_length=120, blank=True, help_text="their last X-Progress")
    members = models.PositiveIntegerField(default=0)
    matched = models.PositiveIntegerField(default=0)
    no_match = models.PositiveIntegerField(default=0)
    consent_constrained = models.PositiveIntegerField(default=0)
    revoked = models.PositiveIntegerField(default=0, help_text="members whose consent ended during the pull")
    received = models.JSONField(default=dict, blank=True, help_text="lines downloaded per type")
    ingested = models.JSONField(default=dict, blank=True, help_text="resources new or changed per type")
    unchanged = models.JSONField(default=dict, blank=True, help_text="resources received again unchanged per type")
    invalid = models.JSONField(default=dict, blank=True, help_text="lines that failed validation per type")
    dropped = models.JSONField(default=dict, blank=True, help_text="lines not taken in, per reason")
    notes = models.JSONField(default=list, blank=True, help_text="what their error files and our checks said")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["previous_payer", "status"], name="pull_payer_status")]

    def __str__(self) -> str:
        return f"pull {self.id} from {self.previous_payer.name} ({self.stage}, {self.status})"


class PullUnit(WorkUnit):
    """One leased step of a pull: the match, the export, or one file of the manifest."""

    class Step(models.TextChoices):
        MATCH = "match"
        EXPORT = "export"
        FILE = "file"

    job = models.ForeignKey(PullJob, on_delete=models.CASCADE, related_name="units")
    step = models.CharField(max_length=16, choices=Step.choices)
    resource_type = models.CharField(max_length=64, blank=True)
    url = models.URLField(max_length=1000, blank=True)
    manifest_kind = models.CharField(max_length=16, blank=True, help_text="output or error")
    expected_count = models.PositiveIntegerField(null=True, blank=True, help_text="the manifest's count")
    received = models.PositiveIntegerField(default=0)
    ingested = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    invalid = models.PositiveIntegerField(default=0)
    dropped = models.JSONField(default=dict, blank=True)
    notes = models.JSONField(default=list, blank=True, help_text="validation failures, their error file's lines")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "sequence"], name="pullunit_job_seq_uniq")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.sequence} {self.step} {self.resource_type}".strip()


class PullMember(models.Model):
    """One of our members in one pull, and what the previous payer's match made of them."""

    class Outcome(models.TextChoices):
        PENDING = "pending"
        MATCHED = "match"
        NO_MATCH = "nomatch"
        CONSENT_CONSTRAINED = "consentconstraint"
        NOT_ASKED = "notasked", "not asked (consent ended before the match)"

    job = models.ForeignKey(PullJob, on_delete=models.CASCADE, related_name="pull_members")
    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="+")
    consent = models.ForeignKey(CollectedConsent, on_delete=models.CASCADE, related_name="pull_members")
    outcome = models.CharField(max_length=24, choices=Outcome.choices, default=Outcome.PENDING, db_index=True)
    their_patient_id = models.CharField(max_length=64, blank=True)
    action = models.TextField(blank=True, help_text="what our staff should do about a member who was not matched")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "member"], name="pullmember_job_member_uniq")]

    def __str__(self) -> str:
        return f"{self.job_id} {self.member_id} {self.outcome}"
