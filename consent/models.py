"""A member's consent for us to disclose their data to one requesting partner."""

from __future__ import annotations

from django.db import models

from pdex.models import Member, Partner

REGULAR_POLICY_URI = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"
SENSITIVE_POLICY_URI = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive"


class Consent(models.Model):
    """The latest consent per (member, partner). Policy names are counter-intuitive (spec §3.1):
    `regular` discloses non-sensitive data only, `sensitive` discloses everything."""

    class Policy(models.TextChoices):
        REGULAR = "regular", "#regular (non-sensitive only)"
        SENSITIVE = "sensitive", "#sensitive (everything)"
        UNKNOWN = "unknown", "unknown policy"

    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"
        REJECTED = "rejected"

    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="consents")
    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="consents")
    policy = models.CharField(max_length=16, choices=Policy.choices)
    policy_uri = models.TextField(blank=True)
    period_start = models.DateField(null=True, blank=True)
    period_end = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    resource = models.JSONField(help_text="the Consent resource as submitted")
    submitted_via = models.CharField(max_length=32, help_text="member-match or bulk-member-match")
    submitted_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)
    revoked_by = models.CharField(max_length=150, blank=True)
    recorded_by = models.CharField(max_length=150, blank=True, help_text="the staff member who recorded it")
    representative = models.CharField(max_length=200, blank=True,
                                      help_text="who signed for the member (an authorized representative)")
    representative_role = models.CharField(max_length=64, blank=True, help_text="the representative's role code")
    document = models.ForeignKey("ConsentDocument", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", help_text="the document a staff-recorded consent came on")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["member", "partner"], name="consent_member_partner_uniq")]
        indexes = [models.Index(fields=["partner", "status"], name="consent_partner_status")]

    def __str__(self) -> str:
        return f"Consent {self.member.umb} → {self.partner} ({self.policy}, {self.status})"


class ConsentDocument(models.Model):
    """The paper or scanned form a consent recorded by staff came on (kept as evidence, never evaluated)."""

    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    data = models.BinaryField()
    size = models.PositiveIntegerField()
    sha1 = models.CharField(max_length=40)
    uploaded_by = models.CharField(max_length=150)
    uploaded_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.filename} ({self.size:,} bytes)"


class ConsentEvent(models.Model):
    """One step in a consent's life: received, decided, recorded by staff, revoked — and by whom."""

    class Action(models.TextChoices):
        RECEIVED = "received"
        RECORDED = "recorded", "recorded by staff"
        DECIDED = "decided"
        REVOKED = "revoked"

    consent = models.ForeignKey(Consent, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=150, help_text="a staff member, or the partner that sent it")
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["consent", "at"], name="consentevent_consent_at")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor}"


class MemberBlock(models.Model):
    """A member told us not to share their data with any payer (partner empty) or with one. It wins over every
    consent (spec §3.3 item 5: "our own restrictions override"); lifting it is recorded, never deleted."""

    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="sharing_blocks")
    partner = models.ForeignKey(Partner, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                help_text="empty: every payer")
    reason = models.TextField()
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=150, blank=True)
    lifted_reason = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["member"], name="memberblock_active",
                                condition=models.Q(lifted_at__isnull=True))]

    def __str__(self) -> str:
        return f"Block {self.member.umb} → {self.partner or 'every payer'}"

    @property
    def active(self) -> bool:
        return self.lifted_at is None
