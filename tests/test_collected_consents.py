"""Consents we collect from our members for their previous payers: the HRex Consent we build, the periods of
the spec's scenarios, revocation (audited, final for the schedule), and POST /fhir/Consent for our own
enrollment systems — a scope no partner is ever given."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from consent.decision import DecisionKind, decide, facts_from_resource, organization_ids
from pdex.auth import scopes
from pdex.models import AuditEvent
from requesting import consents
from requesting.consent_resource import (
    ConsentInvalid,
    ConsentTerms,
    OldCard,
    PayerRef,
    Representative,
    consent_resource,
    read_submitted,
    scenario_period,
)
from requesting.enrollment import ENROLLMENT_CONSENT_SCOPE, issue_token
from requesting.models import CollectedConsent, PreviousPayer
from tests.builders import make_member
from tests.conftest import issue_token as partner_token

pytestmark = pytest.mark.django_db

OLD = PayerRef(npi="1234567893", name="Old Plan Health")
US = PayerRef(npi="1999999999", name="New Plan Health")
TODAY = date(2026, 11, 23)


@pytest.fixture
def us(settings):
    settings.PAYER_NPI, settings.PAYER_NAME = US.npi, US.name


@pytest.fixture
def old_payer() -> PreviousPayer:
    return PreviousPayer.objects.create(name=OLD.name, npi=OLD.npi, fhir_base_url="https://old.example.org/fhir")


def built(**kwargs):
    terms = ConsentTerms("regular", TODAY, TODAY + timedelta(90))
    return consent_resource(consent_id="7", patient_id="np-1", terms=terms, source=OLD, recipient=US,
                            collected_on=TODAY, record_system="https://us/consent", **kwargs)


def test_the_consent_we_build_is_an_hrex_consent_the_old_payers_decision_complies_with():
    resource = built()
    get_fhir_model_class("Consent").model_validate(resource)
    assert resource["meta"]["profile"] == ["http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-consent"]
    assert resource["policy"] == [{"uri": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent"
                                          ".html#regular"}]
    assert resource["performer"] == [{"reference": "Patient/np-1"}] == [resource["patient"]]
    verdict = decide(facts_from_resource(resource), requester=organization_ids(npi=US.npi),
                     us=organization_ids(npi=OLD.npi), can_segment=True, now=TODAY)
    assert verdict.kind is DecisionKind.COMPLY_NON_SENSITIVE
    # The old payer names someone else as recipient: it must refuse.
    assert not decide(facts_from_resource(resource), requester=organization_ids(npi="1555555555"),
                      us=organization_ids(npi=OLD.npi), can_segment=True, now=TODAY).allowed


def test_an_authorized_representative_is_a_contained_related_person_with_its_role():
    resource = built(representative=Representative(name="Jennifer Person", role="HPOWATT", relationship="DAU"))
    get_fhir_model_class("Consent").model_validate(resource)
    [related] = resource["contained"]
    assert related["resourceType"] == "RelatedPerson" and related["patient"] == {"reference": "Patient/np-1"}
    assert resource["performer"] == [{"reference": f"#{related['id']}"}]
    roles = {a["role"]["coding"][0]["code"]: a["reference"] for a in resource["provision"]["actor"]}
    assert roles["HPOWATT"] == {"reference": f"#{related['id']}"}
    assert set(roles) == {"performer", "IRCP", "HPOWATT"}
    with pytest.raises(ConsentInvalid):
        Representative(name="Someone", role="FRIEND")


def test_periods_follow_the_spec_scenarios():
    coverage = date(2026, 12, 1)
    assert scenario_period(scenario="enrollment", collected_on=TODAY, coverage_start=coverage) == (
        TODAY, date(2027, 3, 1))
    assert scenario_period(scenario="concurrent", collected_on=TODAY, coverage_start=coverage,
                           old_coverage_end=date(2027, 9, 30)) == (TODAY, date(2027, 9, 30))
    with pytest.raises(ConsentInvalid):
        scenario_period(scenario="concurrent", collected_on=TODAY, coverage_start=coverage)


def record(member, payer, *, policy="sensitive", start=None):
    start = start or timezone.localdate()
    return consents.record_consent(member=member, payer=payer, terms=ConsentTerms(policy, start, start + timedelta(90)),
                                   scenario="enrollment", coverage_start=start, old_card=OldCard(member_id="M1"),
                                   via="admin", actor="clerk")


def test_recording_makes_the_first_pull_due_and_revoking_stops_every_later_one(us, old_payer):
    member = make_member("np-1")
    consent = record(member, old_payer)
    assert consent.next_pull_at <= timezone.now() and consent.resource["provision"]["actor"][0]["reference"][
        "identifier"]["value"] == OLD.npi
    consents.revoke_consent(consent, reason="member called", actor="clerk")
    consent.refresh_from_db()
    assert (consent.status, consent.next_pull_at) == (CollectedConsent.Status.REVOKED, None)
    assert not consents.valid_on(timezone.localdate()).filter(pk=consent.pk).exists()
    event = AuditEvent.objects.get(action="consent-collect-revoke")
    assert event.entity == f"CollectedConsent/{consent.pk}" and "member called" not in json.dumps(event.detail)
    # Consenting again later is a new consent: due again, and a first pull again (everything).
    again = record(member, old_payer)
    assert again.pk == consent.pk and again.status == "active" and again.last_transaction_time is None


def test_a_consent_the_old_payer_could_not_comply_with_is_refused(us, old_payer):
    with pytest.raises(ConsentInvalid):
        record(make_member("np-2"), old_payer, start=timezone.localdate() - timedelta(days=200))


# --- POST /fhir/Consent ---------------------------------------------------------------------------------

def submitted(*, status="active", member_id="np-1") -> dict:
    today = timezone.localdate()
    resource = consent_resource(
        consent_id="x", patient_id=member_id, terms=ConsentTerms("sensitive", today, today + timedelta(days=90)),
        source=OLD, recipient=US, collected_on=today, record_system="https://enrollment.example.org/forms",
        representative=Representative(name="Pat Doe", role="DPOWATT", relationship="SPS"))
    resource["status"] = status
    resource["contained"] += [
        {"resourceType": "Coverage", "id": "old-card", "status": "active",
         "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                              "code": "MB"}]}, "value": "M123456789"}],
         "subscriberId": "S987", "beneficiary": {"reference": f"Patient/{member_id}"},
         "relationship": {"coding": [{"code": "spouse"}]},
         "payor": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": OLD.npi}}],
         "period": {"end": (today + timedelta(days=200)).isoformat()}},
        {"resourceType": "Coverage", "id": "new-card", "status": "active",
         "beneficiary": {"reference": f"Patient/{member_id}"}, "period": {"start": today.isoformat()},
         "payor": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": US.npi}}]},
    ]
    return resource


def test_reading_a_submitted_consent_finds_the_old_card_our_coverage_and_the_representative():
    facts = read_submitted(submitted(), our_npi=US.npi)
    assert facts.old_card == OldCard(member_id="M123456789", subscriber_id="S987", relationship="spouse",
                                     coverage_end=timezone.localdate() + timedelta(days=200))
    assert facts.coverage_start == timezone.localdate()
    assert facts.representative == Representative(name="Pat Doe", role="DPOWATT", relationship="SPS")
    with pytest.raises(ConsentInvalid, match="IRCP"):
        read_submitted(submitted(), our_npi="1555555555")


@pytest.fixture
def enrollment(client):
    token = issue_token("Enrollment portal").token
    return lambda method, path, body=None: getattr(client, method)(
        path, data=json.dumps(body) if body is not None else None, content_type="application/fhir+json",
        HTTP_AUTHORIZATION=f"Bearer {token}")


def test_our_enrollment_system_records_replaces_reads_and_revokes_a_consent(us, old_payer, enrollment):
    member = make_member("np-1")
    created = enrollment("post", "/fhir/Consent", submitted())
    assert created.status_code == 201, created.content
    consent = CollectedConsent.objects.get(member=member)
    assert created["Location"].endswith(f"/fhir/Consent/{consent.pk}")
    assert (consent.scenario, consent.old_member_id, consent.representative_role) == ("concurrent", "M123456789",
                                                                                     "DPOWATT")
    assert "contained" in created.json() and created.json()["contained"][0]["resourceType"] == "RelatedPerson"
    assert enrollment("post", "/fhir/Consent", submitted()).status_code == 200
    read = enrollment("get", f"/fhir/Consent/{consent.pk}")
    assert read.status_code == 200 and read.json()["status"] == "active"
    revoked = enrollment("post", "/fhir/Consent", submitted(status="inactive"))
    assert revoked.status_code == 200 and revoked.json()["status"] == "inactive"
    assert AuditEvent.objects.filter(action="consent-collect-revoke").count() == 1


def test_the_consent_endpoint_refuses_partners_tokens_without_its_scope_and_bad_consents(
        us, old_payer, enrollment, client, partner):
    make_member("np-1")
    # No partner can be granted the scope, and a partner's token that carried it anyway is still refused.
    assert not scopes.is_known(ENROLLMENT_CONSENT_SCOPE) and not scopes.grant([ENROLLMENT_CONSENT_SCOPE],
                                                                               [ENROLLMENT_CONSENT_SCOPE])
    token = partner_token(partner, f"system/*.read {ENROLLMENT_CONSENT_SCOPE}")
    answer = client.post("/fhir/Consent", data=json.dumps(submitted()), content_type="application/fhir+json",
                         HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 403 and answer.json()["resourceType"] == "OperationOutcome"
    without_scope = issue_token("Another system")
    without_scope.scope = "system/*.read"
    without_scope.save()
    answer = client.post("/fhir/Consent", data=json.dumps(submitted()), content_type="application/fhir+json",
                         HTTP_AUTHORIZATION=f"Bearer {without_scope.token}")
    assert answer.status_code == 403
    assert client.post("/fhir/Consent", data="{}", content_type="application/fhir+json").status_code == 401
    unknown = enrollment("post", "/fhir/Consent", submitted(member_id="np-404"))
    assert unknown.status_code == 422 and "our members" in unknown.json()["issue"][0]["diagnostics"]
    no_card = submitted()
    no_card["contained"] = no_card["contained"][:1]
    assert "old card" in enrollment("post", "/fhir/Consent", no_card).json()["issue"][0]["diagnostics"]
    assert enrollment("post", "/fhir/Consent", submitted(status="inactive", member_id="np-1")).status_code == 404
    refused = AuditEvent.objects.filter(action="consent-collect", outcome=AuditEvent.Outcome.MINOR_FAILURE)
    assert refused.count() == 6  # 403, 403, 401, 422, 422, 404: every refusal, by the one FHIR edge
