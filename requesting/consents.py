"""Consents we collect from our members for their previous payers: record, replace, revoke, and who is due.

These are our own records (the `consent` app holds the consents other payers send us). A consent is recorded
from the admin form or from `POST /fhir/Consent` (our enrollment systems); either way the HRex Consent we will
send is built here, and checked against `consent.decision` as the previous payer will judge it. Revocation is
audited and stops every later request for the member: the schedule never picks them again, and a pull under
way drops them at its next step (requesting.pull).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from consent.decision import decide, facts_from_resource, organization_ids
from pdex import audit
from pdex.fhir import NotFound, Unprocessable
from pdex.models import Member
from requesting.consent_resource import (
    ConsentInvalid,
    ConsentTerms,
    OldCard,
    PayerRef,
    Representative,
    consent_resource,
    read_submitted,
)
from requesting.models import CollectedConsent, PreviousPayer


def us() -> PayerRef:
    return PayerRef(npi=settings.PAYER_NPI, name=settings.PAYER_NAME)


def record_system() -> str:
    """The identifier system of our consent records (Consent.sourceReference names the record)."""
    return f"{settings.FHIR_BASE_URL}/collected-consent"


def build_resource(consent: CollectedConsent) -> dict[str, Any]:
    """The HRex Consent of a recorded consent, as it goes into a member match."""
    representative = None
    if consent.representative_name:
        representative = Representative(name=consent.representative_name, role=consent.representative_role,
                                        relationship=consent.representative_relationship)
    payer = consent.previous_payer
    return consent_resource(
        consent_id=str(consent.pk), patient_id=consent.member.fhir_id,
        terms=ConsentTerms(policy=consent.policy, period_start=consent.period_start, period_end=consent.period_end),
        source=PayerRef(npi=payer.npi, name=payer.name), recipient=us(),
        collected_on=timezone.localdate(consent.collected_at) if consent.collected_at else timezone.localdate(),
        record_system=record_system(), representative=representative)


def check_acceptable(resource: Mapping[str, Any], payer: PreviousPayer, *, on: date) -> None:
    """The consent must satisfy the decision the previous payer will make (consent.decision) on `on` (today, or
    the day its period starts): names it as source and us as recipient, a known policy, a valid period."""
    verdict = decide(facts_from_resource(resource), requester=organization_ids(npi=settings.PAYER_NPI),
                     us=organization_ids(npi=payer.npi), can_segment=True, now=on)
    if not verdict.allowed:
        raise ConsentInvalid(f"the previous payer could not comply with this consent ({verdict.reason})")



def valid_on(day: date) -> QuerySet[CollectedConsent]:
    """Consents a pull may act on today."""
    return CollectedConsent.objects.filter(status=CollectedConsent.Status.ACTIVE, period_start__lte=day,
                                           period_end__gte=day)



@transaction.atomic
def record_consent(*, member: Member, payer: PreviousPayer, terms: ConsentTerms, scenario: str,
                   coverage_start: date, old_card: OldCard, representative: Representative | None = None,
                   via: str, actor: str, request=None, now: datetime | None = None) -> CollectedConsent:
    """Record (or replace) the member's consent for this previous payer; its first pull is due at once (or when
    its period starts). ConsentInvalid when the previous payer could not comply with it."""
    now = now or timezone.now()
    existing = CollectedConsent.objects.select_for_update().filter(member=member, previous_payer=payer).first()
    consent = existing or CollectedConsent(member=member, previous_payer=payer)
    replaced = existing.status if existing else ""
    consent.policy, consent.scenario = terms.policy, scenario
    consent.period_start, consent.period_end = terms.period_start, terms.period_end
    consent.coverage_start = coverage_start
    consent.old_member_id, consent.old_subscriber_id = old_card.member_id, old_card.subscriber_id
    consent.old_relationship, consent.old_coverage_end = old_card.relationship or "self", old_card.coverage_end
    consent.representative_name = representative.name.strip() if representative else ""
    consent.representative_role = representative.role if representative else ""
    consent.representative_relationship = representative.relationship if representative else ""
    consent.status, consent.revoked_at, consent.revoked_reason = CollectedConsent.Status.ACTIVE, None, ""
    consent.collected_via, consent.collected_by = via, actor[:200]
    if replaced == CollectedConsent.Status.REVOKED:
        consent.last_transaction_time = None  # consented again after a revocation: ask for everything
    consent.next_pull_at = max(now, datetime.combine(terms.period_start, datetime.min.time(), tzinfo=now.tzinfo))
    consent.resource = {}
    consent.save()
    consent.resource = build_resource(consent)
    check_acceptable(consent.resource, payer, on=max(terms.period_start, timezone.localdate(now)))
    consent.save(update_fields=["resource"])
    audit.record("consent-collect", audit.SUCCESS, entity=f"CollectedConsent/{consent.pk}", request=request,
                 reason=f"{'replaced' if existing else 'collected'} via {via} by {actor}",
                 detail={"previous_payer": payer.pk, "member": member.pk, "policy": terms.policy,
                         "scenario": scenario, "replaced_status": replaced,
                         "representative": representative.role if representative else ""})
    return consent


def revoke_consent(consent: CollectedConsent, *, reason: str, actor: str, request=None,
                   now: datetime | None = None) -> CollectedConsent:
    """The member withdrew their consent: no request for them goes to that payer again; audited."""
    now = now or timezone.now()
    changed = CollectedConsent.objects.filter(pk=consent.pk).exclude(status=CollectedConsent.Status.REVOKED).update(
        status=CollectedConsent.Status.REVOKED, revoked_at=now, revoked_reason=reason[:1000], next_pull_at=None,
        updated_at=now)
    consent.refresh_from_db()
    if changed:
        audit.record("consent-collect-revoke", audit.SUCCESS, entity=f"CollectedConsent/{consent.pk}",
                     request=request, reason=f"revoked by {actor}",
                     detail={"previous_payer": consent.previous_payer_id, "member": consent.member_id})
    return consent


# --- from FHIR (POST /fhir/Consent, our enrollment systems) ---------------------------------------

@dataclass(frozen=True)
class Recorded:
    consent: CollectedConsent
    created: bool


def collect_from_fhir(resource: Any, *, actor: str, request=None) -> Recorded:
    """Record (status active) or revoke (status inactive) a consent sent as an HRex Consent; Unprocessable
    (422 OperationOutcome) naming what is wrong, NotFound for a revocation of a consent we do not hold."""
    try:
        submitted = read_submitted(resource, our_npi=settings.PAYER_NPI)
    except ConsentInvalid as exc:
        raise Unprocessable(str(exc), code="invalid", audit_reason="invalid consent") from None
    member = Member.objects.filter(fhir_id=submitted.patient_id).first()
    if member is None:
        raise Unprocessable("Consent.patient does not name one of our members.", code="invalid",
                            audit_reason="unknown member")
    payers = PreviousPayer.objects.filter(npi__in=submitted.source_npis)
    payer = payers.first()
    if payer is None:
        raise Unprocessable("The performer (source) actor names no previous payer we exchange with; an admin "
                            "adds it first.", code="invalid", audit_reason="unknown previous payer")
    existing = CollectedConsent.objects.filter(member=member, previous_payer=payer).first()
    if not submitted.active:
        if existing is None:
            raise NotFound("There is no consent of this member for this previous payer to revoke.",
                           audit_reason="no consent to revoke")
        return Recorded(revoke_consent(existing, reason="revoked through the Consent API", actor=actor,
                                       request=request), created=False)
    assert submitted.terms is not None and submitted.old_card is not None
    coverage_start = submitted.coverage_start or submitted.terms.period_start
    concurrent = submitted.old_card.coverage_end is not None and submitted.old_card.coverage_end > coverage_start
    try:
        consent = record_consent(
            member=member, payer=payer, terms=submitted.terms, coverage_start=coverage_start,
            scenario=CollectedConsent.Scenario.CONCURRENT if concurrent else CollectedConsent.Scenario.ENROLLMENT,
            old_card=submitted.old_card, representative=submitted.representative, via="api", actor=actor,
            request=request)
    except ConsentInvalid as exc:
        raise Unprocessable(str(exc), code="business-rule", audit_reason="consent cannot be complied with") from None
    return Recorded(consent, created=existing is None)
