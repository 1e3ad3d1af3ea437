"""The asynchronous-job machinery every async operation shares: job state and the files of its manifest.

Job state lives here, in PostgreSQL; Celery messages only nudge workers to look. Concrete jobs (bulk member
match, exports) subclass AsyncJob in their own apps; their files are OutputFile rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from pdex import logcontext
from pdex.models import InternalClient, Partner


def default_deadline() -> datetime:
    """When a job must be fulfilled by: JOB_DEADLINE_DAYS after it was asked for (Bulk Data: 7 days at most)."""
    return timezone.now() + timedelta(days=settings.JOB_DEADLINE_DAYS)


class JobState(models.Model):
    """What the job engine keeps of any job: its state, progress counts, service level and how it ended.

    AsyncJob adds what a partner's asynchronous request has (its partner, its kick-off URL, its polling);
    jobs we run for ourselves (the requesting side's pulls) build on JobState directly.
    """

    class Priority(models.IntegerChoices):
        """Urgent work is claimed before normal work (pdex.jobs.engine.claim); higher runs first."""

        NORMAL = 0, "normal"
        URGENT = 1, "urgent"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    transaction_time = models.DateTimeField(null=True, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error = models.JSONField(null=True, blank=True, help_text="OperationOutcome when the job failed")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="outputs are deleted after this")
    finalize_started_at = models.DateTimeField(null=True, blank=True,
                                               help_text="when the last unit of work began finishing the job")
    # Service levels (docs/service-levels.md): what the claim order and the dashboard read.
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL,
                                                help_text="urgent work is claimed first; an admin may raise it")
    deadline = models.DateTimeField(default=default_deadline,
                                    help_text="to be fulfilled by (JOB_DEADLINE_DAYS after the request)")
    deadline_warned_at = models.DateTimeField(null=True, blank=True,
                                              help_text="when the sweep logged that the deadline is near")
    request_id = models.CharField(max_length=64, blank=True, default=logcontext.request_id,
                                  help_text="X-Request-ID of the kick-off: its log lines and its workers' share it")

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.COMPLETED, self.Status.FAILED, self.Status.CANCELLED}

    @property
    def is_urgent(self) -> bool:
        return self.priority >= self.Priority.URGENT

    def deadline_state(self, now: datetime | None = None) -> str:
        """met, missed, overdue, due soon (within JOB_DEADLINE_WARNING_HOURS) or on time."""
        now = now or timezone.now()
        if self.is_finished:
            end = self.finished_at or now
            return "met" if end <= self.deadline else "missed"
        if now > self.deadline:
            return "overdue"
        if now > self.deadline - timedelta(hours=settings.JOB_DEADLINE_WARNING_HOURS):
            return "due soon"
        return "on time"


class AsyncJob(JobState):
    """The FHIR asynchronous request pattern's state: what the status URL reports to the partner that asked."""

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="+")
    request_url = models.TextField(help_text="the kick-off URL, as the manifest's `request`")
    last_polled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class WorkUnit(models.Model):
    """One leasable piece of a job's work (an export chunk, a match batch): the job engine's unit.

    A worker holds a unit only under a lease it renews (heartbeat); a unit whose lease expired is taken over
    by the next worker that asks for work (pdex.jobs.engine). Subclasses add `job` and their own payload.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    sequence = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True, help_text="back-off: not leased again before this")
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires = models.DateTimeField(null=True, blank=True, db_index=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class OutputFile(models.Model):
    """One NDJSON file of a job's manifest (output, error or deleted), served at its own URL."""

    class Kind(models.TextChoices):
        OUTPUT = "output"
        ERROR = "error"
        DELETED = "deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job_id = models.UUIDField(db_index=True, help_text="a MatchJob or an ExportJob")
    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OUTPUT)
    resource_type = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=500, unique=True)
    count = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    sequence = models.PositiveIntegerField(default=0, help_text="order within the manifest")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "resource_type", "sequence"]

    def __str__(self) -> str:
        return self.storage_key


class ImportJob(JobState):
    """A bulk import by one of our own systems: NDJSON files named by URL, each loaded through the ingest path
    (pdex.write.bulkimport). Not partner-facing: its client polls `$import-status/{id}`."""

    client = models.ForeignKey(InternalClient, on_delete=models.CASCADE, related_name="imports")
    request_url = models.TextField()
    validate = models.BooleanField(default=True, help_text="validate every line with the R4B models")
    counts = models.JSONField(default=dict, blank=True, help_text="resources stored per type")

    def __str__(self) -> str:
        return f"import {self.id}"


class ImportFile(WorkUnit):
    """One input file of an import, loaded by one worker at a time (a rerun stores the same rows again)."""

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="files")
    url = models.TextField()
    resource_type = models.CharField(max_length=64, blank=True, help_text="the type the request named")
    read = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0, help_text="inserted or changed")
    bad = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    notes = models.JSONField(default=list, blank=True, help_text="why lines were skipped (never their content)")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "sequence"], name="importfile_job_seq_uniq")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.sequence}"
