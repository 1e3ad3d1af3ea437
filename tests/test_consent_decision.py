"""The consent decision (spec §3): each reason, inclusive period bounds, exact policy URIs."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from consent import services
from consent.decision import (
    NPI_SYSTEM,
    REGULAR_POLICY_URI,
    SENSITIVE_POLICY_URI,
    ConsentFacts,
    DecisionKind,
    Reason,
    decide,
    facts_from_resource,
    organization_ids,
)
from consent.models import Consent
from pdex.models import AuditEvent
from tests.builders import consent_for, consent_resource, days_ago, days_from_now, example, make_member

OLD = "9876543210"
NEW = "0123456789"
US = organization_ids(npi=OLD, organization_id="payer-old-plan")
REQUESTER = organization_ids(npi=NEW)
# The pure decision runs at a fixed "now", inside a consent for that calendar year.
NOW = date(2026, 7, 15)
PERIOD_START, PERIOD_END = NOW.replace(month=1, day=1), NOW.replace(month=12, day=31)


def facts(**changes) -> ConsentFacts:
    base = dict(policy="sensitive", period_start=PERIOD_START, period_end=PERIOD_END, status="active",
                sources=frozenset({(NPI_SYSTEM, OLD)}), recipients=frozenset({(NPI_SYSTEM, NEW)}))
    base.update(changes)
    return ConsentFacts(**base)


def run(f, *, now=NOW, can_segment=True, requester=REQUESTER):
    return decide(f, requester=requester, us=US, can_segment=can_segment, now=now)


def test_sensitive_policy_discloses_everything():
    decision = run(facts(policy="sensitive"))
    assert decision.kind is DecisionKind.COMPLY_ALL and decision.include_sensitive and decision.allowed


def test_regular_policy_discloses_non_sensitive_only():
    decision = run(facts(policy="regular"))
    assert decision.kind is DecisionKind.COMPLY_NON_SENSITIVE
    assert decision.allowed and not decision.include_sensitive


def test_regular_without_segmentation_cannot_comply():
    decision = run(facts(policy="regular"), can_segment=False)
    assert (decision.kind, decision.reason) == (DecisionKind.CANNOT_COMPLY, Reason.CANNOT_SEGMENT)
    assert run(facts(policy="sensitive"), can_segment=False).kind is DecisionKind.COMPLY_ALL


@pytest.mark.parametrize("today,allowed", [
    (PERIOD_START - timedelta(days=1), False), (PERIOD_START, True), (PERIOD_END, True),
    (PERIOD_END + timedelta(days=1), False),
])
def test_period_bounds_are_inclusive(today, allowed):
    decision = run(facts(), now=today)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason is Reason.PERIOD_NOT_VALID


def test_now_as_datetime_uses_its_date():
    assert run(facts(), now=datetime.combine(PERIOD_END, time(23, 59), UTC)).allowed


def test_open_period_is_not_valid():
    assert run(facts(period_end=None)).reason is Reason.PERIOD_NOT_VALID


@pytest.mark.parametrize("change,reason", [
    ({"policy": "unknown"}, Reason.UNKNOWN_POLICY),
    ({"status": "revoked"}, Reason.REVOKED),
    ({"status": "rejected"}, Reason.REJECTED),
    ({"sources": frozenset({(NPI_SYSTEM, "1111111111")})}, Reason.NOT_SOURCE),
    ({"recipients": frozenset({(NPI_SYSTEM, "1111111111")})}, Reason.NOT_RECIPIENT),
])
def test_each_refusal_reason(change, reason):
    decision = run(facts(**change))
    assert (decision.kind, decision.reason) == (DecisionKind.CANNOT_COMPLY, reason)


def test_requester_not_the_recipient():
    assert run(facts(), requester=organization_ids(npi="5555555555")).reason is Reason.NOT_RECIPIENT


def test_no_consent_cannot_comply():
    assert run(None).reason is Reason.NO_CONSENT


def test_example_consent_facts():
    parsed = facts_from_resource(example("consent-hrex-payer-to-payer.json"))
    assert parsed.policy in ("regular", "sensitive")
    assert (NPI_SYSTEM, OLD) in parsed.sources and (NPI_SYSTEM, NEW) in parsed.recipients


def test_policy_uris_are_matched_exactly():
    consent = example("consent-hrex-authorized-representative.json")
    assert facts_from_resource(consent).policy == "sensitive"
    consent["policy"] = [{"uri": REGULAR_POLICY_URI}]
    assert facts_from_resource(consent).policy == "regular"
    for near_miss in (SENSITIVE_POLICY_URI.upper(), SENSITIVE_POLICY_URI + "x", "#sensitive",
                      "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-consent#sensitive"):
        consent["policy"] = [{"uri": near_miss}]
        assert facts_from_resource(consent).policy == "unknown"


def test_authorized_representative_extra_actor_is_ignored():
    parsed = facts_from_resource(example("consent-hrex-authorized-representative.json"))
    assert run(parsed, now=parsed.period_start).kind is DecisionKind.COMPLY_ALL  # on a day the example covers


def test_actor_by_contained_organization_and_by_reference():
    consent = example("consent-hrex-payer-to-payer.json")
    consent["contained"] = [{"resourceType": "Organization", "id": "old",
                             "identifier": [{"system": NPI_SYSTEM, "value": OLD}]}]
    actors = consent["provision"]["actor"]
    actors[0]["reference"] = {"reference": "#old"}
    actors[1]["reference"] = {"reference": "Organization/payer-old-plan"}
    parsed = facts_from_resource(consent)
    assert (NPI_SYSTEM, OLD) in parsed.sources
    assert ("reference", "Organization/payer-old-plan") in parsed.recipients


def test_fhir_status_other_than_active_is_refused():
    consent = example("consent-hrex-payer-to-payer.json")
    consent["status"] = "inactive"
    assert facts_from_resource(consent).status == "revoked"
    consent["status"] = "proposed"
    assert facts_from_resource(consent).status == "rejected"


# --- services: consents recorded as member match records them, decided at the real "now" ------------------

@pytest.fixture
def member(db):
    return make_member("pat-1", umb="UMB-1", member_number="DH1", family="Person", given=("Patricia", "Ann"),
                       birth_date="1974-12-25", gender="female")


def test_the_tests_consent_is_valid_fhir_naming_us_and_the_recipient(member):
    resource = consent_resource(member.fhir_id, NEW, start=days_ago(30), end=days_from_now(60))
    get_fhir_model_class("Consent").model_validate(resource)
    parsed = facts_from_resource(resource)
    assert (NPI_SYSTEM, settings.PAYER_NPI) in parsed.sources and parsed.recipients == {(NPI_SYSTEM, NEW)}


def test_record_and_decide(member, make_partner):
    partner = make_partner(npi=NEW)
    other = make_partner(npi="2222222222")
    start, end = days_ago(30), days_from_now(60)
    consent = consent_for(member, partner, start=start, end=end)
    assert consent.period_start == start.date() and consent.status == Consent.Status.ACTIVE
    assert services.decision_for(member, partner).allowed
    assert services.decision_for(member, other).reason is Reason.NO_CONSENT
    later = datetime.combine(end.date() + timedelta(days=1), time(), UTC)
    assert services.decision_for(member, partner, later).reason is Reason.PERIOD_NOT_VALID


def test_revocation_sticks_across_resubmission(member, make_partner):
    partner = make_partner(npi=NEW)
    consent = consent_for(member, partner)
    services.revoke(consent, "member asked us to block release")
    assert services.decision_for(member, partner).reason is Reason.REVOKED
    consent_for(member, partner)
    assert services.decision_for(member, partner).reason is Reason.REVOKED
    assert AuditEvent.objects.filter(action="consent-revoke", partner=partner).count() == 1


def test_decisions_for_members_is_one_query(member, make_partner, django_assert_num_queries):
    partner = make_partner(npi=NEW)
    consent_for(member, partner, via="bulk-member-match")
    other = make_member("pat-2", umb="UMB-2")
    now = timezone.now()
    with django_assert_num_queries(1):
        decisions = services.decisions_for_members(partner, [member.pk, other.pk], now)
    assert decisions[member.pk].allowed
    assert decisions[other.pk].reason is Reason.NO_CONSENT


def test_segmentation_setting_applies_to_stored_regular_consent(settings, member, make_partner):
    partner = make_partner(npi=NEW)
    consent_for(member, partner, policy="regular")
    assert services.decision_for(member, partner).kind is DecisionKind.COMPLY_NON_SENSITIVE
    settings.CONSENT_CAN_SEGMENT_SENSITIVE = False
    assert services.decision_for(member, partner).reason is Reason.CANNOT_SEGMENT


# --- admin -----------------------------------------------------------------------------------------

def test_admin_lists_consents_with_filters_and_revokes(admin_client, member, make_partner):
    partner = make_partner(npi=NEW)
    consent = consent_for(member, partner)
    for query in ("", "?status__exact=active", "?policy__exact=regular", f"?partner__id__exact={partner.pk}",
                  "?period=current", "?period=expired"):
        assert admin_client.get(f"/admin/consent/consent/{query}").status_code == 200
    asked = admin_client.post("/admin/consent/consent/", {"action": "revoke_selected",
                                                          "_selected_action": [consent.pk]})
    assert asked.status_code == 200 and b"Yes, revoked them" in asked.content  # asks first, with a reason
    consent.refresh_from_db()
    assert consent.status == Consent.Status.ACTIVE
    response = admin_client.post("/admin/consent/consent/", {"action": "revoke_selected", "confirmed": "yes",
                                                             "reason": "member phoned to withdraw",
                                                             "_selected_action": [consent.pk]})
    assert response.status_code == 302
    consent.refresh_from_db()
    assert consent.status == Consent.Status.REVOKED and consent.revoked_reason == "member phoned to withdraw"
    assert consent.revoked_by == "admin"
    event = AuditEvent.objects.get(action="consent-revoke")
    assert event.entity == f"Consent/{consent.pk}" and event.reason == "revoked by admin"
    history = admin_client.get(f"/admin/consent/consent/{consent.pk}/change/").content.decode()
    assert "received via member-match" in history and "member phoned to withdraw" in history


def test_admin_match_pages(admin_client, make_partner):
    from matching.models import GroupMember, MatchJob, MemberMatchGroup

    partner = make_partner()
    job = MatchJob.objects.create(partner=partner, request_url="x", progress_total=3, matched=1)
    group = MemberMatchGroup.objects.create(partner=partner, job=job, code="match", resource={})
    member = make_member("pat-9", umb="UMB-9")
    GroupMember.objects.create(group=group, member=member)
    for url in ("/admin/matching/matchjob/", f"/admin/matching/matchjob/{job.pk}/change/",
                "/admin/matching/membermatchgroup/", f"/admin/matching/membermatchgroup/{group.pk}/change/",
                f"/admin/matching/groupmember/?group__id__exact={group.pk}", "/admin/matching/matchentry/"):
        assert admin_client.get(url).status_code == 200
