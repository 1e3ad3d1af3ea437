"""Export jobs and their chunks. Job state lives in PostgreSQL; Celery messages only nudge workers to look."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models

from pdex.jobs.models import AsyncJob, OutputFile, WorkUnit
from pdex.models import Partner


class ExportJob(AsyncJob):
    """A $davinci-data-export, Group $export, Patient $export, system $export or asynchronous $everything."""

    class Kind(models.TextChoices):
        DAVINCI = "davinci-data-export"
        GROUP = "group-export"
        PATIENT = "patient-export"
        SYSTEM = "system-export"
        EVERYTHING = "everything"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    group = models.ForeignKey("matching.MemberMatchGroup", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="export_jobs")
    params = models.JSONField(default=dict, help_text="validated kick-off parameters")
    member_count = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True, help_text="resources written per type")
    sizes = models.JSONField(default=dict, blank=True, help_text="bytes written per type")
    messages = models.JSONField(default=list, blank=True,
                                help_text="OperationOutcome issues of the kick-off for the error file (warnings)")
    planning_messages = models.JSONField(default=list, blank=True,
                                         help_text="OperationOutcome issues of the last planning (exclusions)")
    withdrawn_members = models.PositiveIntegerField(
        default=0, help_text="members whose consent ended after their data was written: the job re-ran without them")
    partner_version = models.BigIntegerField(
        null=True, blank=True,
        help_text="the version of the partner row the plan judged consents with (consent.services.PARTNER_VERSION): "
                  "another one has every member judged again")

    class Meta:
        indexes = [models.Index(fields=["partner", "status"], name="exportjob_partner_status")]

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class ExportChunk(WorkUnit):
    """One unit of export work: members × one resource type (or several small types), sized by rows. Leased by
    one worker at a time."""

    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="chunks")
    resource_type = models.CharField(max_length=64, help_text="the first of its types")
    resource_types = ArrayField(models.CharField(max_length=64), default=list, blank=True,
                                help_text="every type it writes (small types share a chunk)")
    member_ids = ArrayField(models.BigIntegerField(), default=list)
    regular_member_ids = ArrayField(models.BigIntegerField(), default=list, blank=True,
                                    help_text="members whose consent is #regular: their sensitive data is withheld")
    consent_versions = ArrayField(
        models.BigIntegerField(), default=list, blank=True,
        help_text="the version of each member's consent row the plan judged (consent.services.CONSENT_VERSION), "
                  "in member_ids order: later gates judge again only members whose consent is no longer it")
    withdrawn_member_ids = ArrayField(
        models.BigIntegerField(), default=list, blank=True,
        help_text="members whose consent had ended when the chunk started: nothing of theirs was written")
    refs = ArrayField(models.CharField(max_length=160), default=list, blank=True,
                      help_text="shared resources the written rows reference, as Type/id")
    parts = models.PositiveSmallIntegerField(default=0, help_text="files written")
    count = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "sequence"], name="exportchunk_job_seq_uniq")]
        # The claim's probe for a job's next unit due skips the done ones (pdex.jobs.engine.claim).
        indexes = [models.Index(fields=["job", "sequence"], name="exportchunk_open",
                                condition=models.Q(status__in=["pending", "running"]))]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.sequence} {'+'.join(self.types)}"

    @property
    def types(self) -> list[str]:
        return list(self.resource_types) or [self.resource_type]


class ExportFilePart(models.Model):
    """One chunk's lines of one type (a segment), and once the export is published the file that holds them.

    Chunks write segments; finalize joins a type's segments, in order, into files of at most
    EXPORT_FILE_MAX_BYTES and records here which file (`output_file`) holds each segment at which byte
    `offset`. So the members of a published file are the members of the chunks of its parts
    (`exports.files.file_members`), which is what withdrawing a file on a consent's end needs.
    """

    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="file_parts")
    chunk = models.ForeignKey(ExportChunk, null=True, blank=True, on_delete=models.CASCADE, related_name="file_parts",
                              help_text="empty for the shared resources finalize writes")
    resource_type = models.CharField(max_length=64)
    sequence = models.PositiveIntegerField(help_text="order within its type's files")
    storage_key = models.CharField(max_length=500, unique=True, help_text="the segment while unpublished")
    count = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    output_file = models.ForeignKey(OutputFile, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="export_parts", help_text="the published file holding it")
    offset = models.BigIntegerField(default=0, help_text="where its lines start in that file")

    class Meta:
        indexes = [models.Index(fields=["job", "resource_type", "sequence"], name="exportfilepart_job_type_seq")]

    def __str__(self) -> str:
        return f"{self.job_id} {self.resource_type} #{self.sequence}"


class PartnerReceipts(Partner):
    """A partner seen as what it received, for the admin's page of it (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "data received by partner"
        verbose_name_plural = "data received by partner"
