"""The member data store, requesting partners and the audit trail."""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


class Member(models.Model):
    """One of our members: a Patient in the store plus the columns matching looks people up by."""

    fhir_id = models.CharField(max_length=64, unique=True, help_text="Patient.id in our store")
    umb = models.CharField(
        "unique member business identifier", max_length=64, unique=True,
        help_text="hrex-temp#UMB: one id per person, whatever the product or role",
    )
    # Identity from the member's Coverage with us (pdex.identity): a lookup key that demographics must confirm.
    # Not unique: a payer's data may give a family one card number, and a reload may swap two members' numbers.
    member_number = models.CharField(max_length=64, blank=True, default="", db_default="", db_index=True,
                                     help_text="Coverage member id (identifier typed MB)")
    member_number_system = models.TextField(blank=True, default="", db_default="",
                                            help_text="the system of that identifier, as the Coverage gives it")
    subscriber_id = models.CharField(max_length=64, blank=True, db_index=True, help_text="Coverage.subscriberId")
    identity_coverage = models.CharField(max_length=64, blank=True, default="", db_default="",
                                         help_text="Coverage.id the member number and subscriber id come from")
    family = models.CharField(max_length=128, blank=True, help_text="normalized family name")
    given = models.CharField(max_length=128, blank=True, help_text="normalized given names")
    birth_date = models.DateField(null=True, blank=True)
    gender = models.CharField(max_length=16, blank=True)
    postal_code = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["birth_date", "family"], name="member_birth_family")]

    def __str__(self) -> str:
        return f"{self.umb} (Patient/{self.fhir_id})"


class Resource(models.Model):
    """One FHIR resource as JSONB, with the columns the export rules filter on, extracted at ingest."""

    resource_type = models.CharField(max_length=64)
    fhir_id = models.CharField(max_length=64)
    # No index of its own: the (member, resource_type, …) indexes below lead with it and serve every lookup by
    # member; with a member-only index beside them the planner picked it for "this member's rows of one type"
    # and filtered out the other types row by row (a third of an export chunk's time).
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.CASCADE, db_index=False,
                               related_name="resources",
                               help_text="empty for shared resources (Organization, Practitioner, …)")
    body = models.JSONField()
    last_updated = models.DateTimeField(help_text="meta.lastUpdated (the _since filter)")
    service_start = models.DateTimeField(null=True, blank=True, help_text="date of service (the window)")
    service_end = models.DateTimeField(null=True, blank=True)
    sensitive = models.BooleanField(default=False)
    clinical_status = models.CharField(max_length=32, blank=True,
                                       help_text="Condition/AllergyIntolerance clinicalStatus code")
    eob_use = models.CharField(max_length=32, blank=True, help_text="ExplanationOfBenefit.use")
    pa_status = models.CharField(max_length=32, blank=True,
                                 help_text="prior authorization: approved, partial, pending, denied, cancelled")
    pa_status_changed = models.DateTimeField(null=True, blank=True)
    pa_period_end = models.DateTimeField(null=True, blank=True, help_text="end of preAuthRefPeriod")
    pa_drug = models.BooleanField(default=False, help_text="prescription-drug prior authorization")
    refs = ArrayField(models.CharField(max_length=160), default=list, blank=True,
                      help_text="references to shared resources, as Type/id")
    source_format = models.CharField(max_length=32, blank=True, default="", db_default="",
                                     help_text="PDex ProvenancePayerDataSource code of what it was made from, "
                                               "when ingest knew it")
    ingested_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resource_type", "fhir_id"], name="resource_type_fhir_id_uniq"),
        ]
        indexes = [
            models.Index(fields=["member", "resource_type", "service_start"], name="resource_member_type_service"),
            models.Index(fields=["member", "resource_type", "last_updated"], name="resource_member_type_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.fhir_id}"


class Tombstone(models.Model):
    """A resource deleted from the store: what `_since` exports list in the manifest's `deleted` array.

    It keeps the row's rule columns (not the body) as they were at deletion, so an export can tell whether the
    partner would have been allowed to receive the resource (exports.deleted); expired by the maintenance sweep
    after TOMBSTONE_RETENTION_DAYS (docs/data-store.md, "Deletions").
    """

    resource_type = models.CharField(max_length=64)
    fhir_id = models.CharField(max_length=64)
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.CASCADE, related_name="tombstones")
    deleted_at = models.DateTimeField(default=timezone.now)
    deleted_by = models.CharField(max_length=200, blank=True, help_text="the internal client that deleted it")
    last_updated = models.DateTimeField(null=True, blank=True)
    service_start = models.DateTimeField(null=True, blank=True)
    service_end = models.DateTimeField(null=True, blank=True)
    sensitive = models.BooleanField(default=False)
    clinical_status = models.CharField(max_length=32, blank=True)
    eob_use = models.CharField(max_length=32, blank=True)
    pa_status = models.CharField(max_length=32, blank=True)
    pa_status_changed = models.DateTimeField(null=True, blank=True)
    pa_period_end = models.DateTimeField(null=True, blank=True)
    pa_drug = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["member", "deleted_at"], name="tombstone_member_deleted"),
                   models.Index(fields=["deleted_at"], name="tombstone_deleted"),
                   models.Index(fields=["resource_type", "fhir_id"], name="tombstone_type_id")]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.fhir_id} deleted {self.deleted_at:%Y-%m-%d}"


class InternalClient(models.Model):
    """One of our own systems (claims, clinical, prior authorization) that writes into the store.

    Registered by an admin, never by dynamic registration, and never a Partner: its OAuth application has no
    partner, and the write endpoints refuse every partner's token whatever its scopes (pdex.write.access).
    """

    name = models.CharField(max_length=200, unique=True)
    application = models.OneToOneField(settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.PROTECT,
                                       related_name="internal_client")
    allowed_scopes = models.TextField(default="system/*.write",
                                      help_text="space-separated write scopes, e.g. system/*.write or "
                                                "system/Claim.cud system/ClaimResponse.cud")
    active = models.BooleanField(default=True)
    source_format = models.CharField(max_length=32, blank=True,
                                     help_text="what this system's data was made from (PDex ProvenancePayerDataSource "
                                               "code: x12837, hl7v2adt, hl7ccda, ncpdp, unstructured, …)")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Partner(models.Model):
    """A requesting payer: another health plan allowed to call our FHIR API."""

    class Status(models.TextChoices):
        PENDING = "pending"
        ACTIVE = "active"
        SUSPENDED = "suspended"

    name = models.CharField(max_length=200)
    npi = models.CharField("NPI", max_length=10, blank=True, db_index=True)
    payer_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    allowed_scopes = models.TextField(blank=True, help_text="space-separated scopes this partner may be granted")
    jwks = models.JSONField(null=True, blank=True, help_text="public keys by value (a JWK Set)")
    jwks_url = models.URLField(max_length=500, blank=True, help_text="public keys by reference (preferred)")
    agreement_date = models.DateField(null=True, blank=True, help_text="date of the data sharing agreement")
    agreement_end = models.DateField(null=True, blank=True,
                                     help_text="last day the data sharing agreement is in force (empty: open-ended)")
    match_failure_budget = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="members this partner may submit without a match per failure window, across $member-match and "
                  "$bulk-member-match (empty: MEMBER_MATCH_MAX_FAILURES)")
    contact_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    application = models.OneToOneField(settings.OAUTH2_PROVIDER_APPLICATION_MODEL, null=True, blank=True,
                                       on_delete=models.PROTECT, related_name="partner")
    registered_via = models.CharField(max_length=32, default="admin", help_text="admin, command or dcr")
    software_statement = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name

    def has_agreement(self, today: date | None = None) -> bool:
        """A data-sharing agreement is on file and in force today (signed, not ended)."""
        today = today or timezone.localdate()
        return (self.agreement_date is not None and self.agreement_date <= today
                and (self.agreement_end is None or today <= self.agreement_end))

    @property
    def client_id(self) -> str:
        return self.application.client_id if self.application_id else ""

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class TrustAnchor(models.Model):
    """A key set we trust to sign software statements in dynamic client registration."""

    name = models.CharField(max_length=200)
    jwks = models.JSONField(null=True, blank=True)
    jwks_url = models.URLField(max_length=500, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class AuditEvent(models.Model):
    """An AuditEvent-shaped record of every access and decision: who, what, outcome, why."""

    class Outcome(models.TextChoices):
        SUCCESS = "0", "success"
        MINOR_FAILURE = "4", "refused"
        SERIOUS_FAILURE = "8", "failed"
        MAJOR_FAILURE = "12", "major failure"

    recorded = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=64, db_index=True, help_text="token, register, member-match, export, …")
    outcome = models.CharField(max_length=2, choices=Outcome.choices)
    partner = models.ForeignKey(Partner, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="audit_events")
    client_id = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    entity = models.CharField(max_length=300, blank=True, help_text="what was acted on, e.g. Group/abc")
    detail = models.JSONField(default=dict, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-recorded"]
        indexes = [models.Index(fields=["partner", "-recorded"], name="audit_partner_recorded")]

    def __str__(self) -> str:
        return f"{self.recorded:%Y-%m-%d %H:%M:%S} {self.action} {self.get_outcome_display()}"


# The asynchronous-job models live in pdex.jobs; importing them here registers them with the app.
from pdex.jobs.models import AsyncJob, ImportFile, ImportJob, OutputFile  # noqa: E402, F401
