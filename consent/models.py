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

    class Meta:
        constraints = [models.UniqueConstraint(fields=["member", "partner"], name="consent_member_partner_uniq")]
        indexes = [models.Index(fields=["partner", "status"], name="consent_partner_status")]

    def __str__(self) -> str:
        return f"Consent {self.member.umb} → {self.partner} ({self.policy}, {self.status})"
