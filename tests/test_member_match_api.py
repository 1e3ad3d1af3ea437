"""POST /fhir/Patient/$member-match: 200 with the UMB, or 422 with one generic text; throttled; audited."""

from __future__ import annotations

import copy
import gzip
import json
from datetime import date

import pytest
from rest_framework.test import APIClient

from consent.decision import REGULAR_POLICY_URI, SENSITIVE_POLICY_URI
from consent.models import Consent
from pdex.auth import scopes
from pdex.models import AuditEvent, Member
from tests.builders import EXAMPLE_PAYER_NPI, SAMPLE, current_period, example, expired_period, make_member

URL = "/fhir/Patient/$member-match"
UMB_CODING = {"system": "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "code": "UMB"}


def with_consent(body: dict, *, policy: str = SENSITIVE_POLICY_URI, period: dict | None = None) -> dict:
    """The example request with its Consent's period moved around today (the example's is 2022)."""
    body = copy.deepcopy(body)
    consent = next(p for p in body["parameter"] if p["name"] == "Consent")["resource"]
    consent["provision"]["period"] = period or current_period()
    consent["policy"] = [{"uri": policy}]
    return body


def patient_part(body: dict) -> dict:
    return next(p for p in body["parameter"] if p["name"] == "MemberPatient")["resource"]


@pytest.fixture(autouse=True)
def our_plan(settings):
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    settings.CONSENT_CAN_SEGMENT_SENSITIVE = True
    settings.MEMBER_MATCH_MAX_FAILURES = 50


@pytest.fixture
def patricia(db) -> Member:
    return make_member("pat-patricia", umb="UMB-PATRICIA", member_number="DH10001235", subscriber_id="1234564321",
                       family="Person", given=("Patricia", "Ann"), birth_date="1974-12-25", gender="female",
                       postal_code="02134")


def post(client: APIClient, body) -> object:
    return client.post(URL, data=json.dumps(body), content_type="application/fhir+json")


def test_exact_match_returns_umb_and_patient_and_stores_consent(api, patricia, partner):
    response = post(api, with_consent(example("member-match-request.json")))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["resourceType"] == "Parameters"
    identifier = next(p for p in body["parameter"] if p["name"] == "MemberIdentifier")["valueIdentifier"]
    assert identifier["type"]["coding"] == [UMB_CODING] and identifier["value"] == "UMB-PATRICIA"
    assert next(p for p in body["parameter"] if p["name"] == "MemberId")["valueReference"] == {
        "reference": "Patient/pat-patricia"}
    consent = Consent.objects.get(member=patricia, partner=partner)
    assert consent.policy == Consent.Policy.SENSITIVE and consent.submitted_via == "member-match"
    event = AuditEvent.objects.get(action="member-match", partner=partner)
    assert event.outcome == AuditEvent.Outcome.SUCCESS and event.reason == "matched"
    assert "Person" not in json.dumps(event.detail) + event.reason and "1974" not in json.dumps(event.detail)


def test_typo_in_given_name_with_right_member_id_matches(api, patricia):
    body = with_consent(example("member-match-request.json"))
    patient_part(body)["name"][0]["given"] = ["Patrica", "Ann"]
    assert post(api, body).status_code == 200


def refused(response) -> str:
    assert response.status_code == 422, response.content
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = json.dumps(outcome)
    assert "pat-patricia" not in text and "UMB-" not in text
    return outcome["issue"][0]["diagnostics"]


def test_no_match_several_and_consent_answer_the_same_text(api, patricia, partner):
    wrong_birth = with_consent(example("member-match-request.json"))
    patient_part(wrong_birth)["birthDate"] = "1974-12-24"
    no_match = refused(post(api, wrong_birth))

    make_member("pat-twin", umb="UMB-TWIN", member_number="DH2", family="Person", given=("Patricia", "Ann"),
                birth_date="1974-12-25", gender="female", postal_code="02134")
    no_identifier = with_consent(example("member-match-request.json"))
    coverage = next(p for p in no_identifier["parameter"] if p["name"] == "CoverageToMatch")["resource"]
    coverage["identifier"][0]["value"] = "UNKNOWN-ID"
    patient_part(no_identifier)["address"] = [{"postalCode": "02134"}]
    several = refused(post(api, no_identifier))

    expired = with_consent(example("member-match-request.json"), period=expired_period())
    consent = refused(post(api, expired))

    assert no_match == several == consent
    reasons = list(AuditEvent.objects.filter(action="member-match", partner=partner)
                   .order_by("recorded").values_list("reason", flat=True))
    assert reasons == ["422 processing: no match", "422 processing: several", "422 processing: consent"]
    assert not Consent.objects.exists()


def test_wrong_requester_is_consent_constrained(make_partner, api_for, patricia):
    other = make_partner("Another Plan", npi="5555555555")
    refused(post(api_for(other), with_consent(example("member-match-request.json"))))
    assert AuditEvent.objects.get(action="member-match", partner=other).reason == "422 processing: consent"


def test_regular_policy_needs_segmentation(api, patricia, settings):
    body = with_consent(example("member-match-request.json"), policy=REGULAR_POLICY_URI)
    settings.CONSENT_CAN_SEGMENT_SENSITIVE = False
    refused(post(api, body))
    settings.CONSENT_CAN_SEGMENT_SENSITIVE = True
    assert post(api, body).status_code == 200
    assert Consent.objects.get(member=patricia).policy == Consent.Policy.REGULAR


def test_missing_consent_cannot_be_complied_with(api, patricia):
    body = with_consent(example("member-match-request.json"))
    body["parameter"] = [p for p in body["parameter"] if p["name"] != "Consent"]
    refused(post(api, body))


def test_legacy_oldcoverage_newcoverage_input(api, patricia):
    body = example("member-match-request.legacy-oldcoverage-newcoverage.json")
    refused(post(api, body))  # HRex 0.2.0 had no Consent: nothing to comply with
    consent = next(p for p in with_consent(example("member-match-request.json"))["parameter"] if p["name"] == "Consent")
    body["parameter"].append(consent)
    response = post(api, body)
    assert response.status_code == 200, response.content
    assert {p["name"] for p in response.json()["parameter"]} == {"MemberIdentifier", "MemberId"}


def test_hrex_1_0_0_input(api, patricia):
    assert post(api, with_consent(example("member-match-request.hrex-1.0.0.json"))).status_code == 200


def test_get_is_not_allowed(api):
    response = api.get(URL)
    assert response.status_code == 405 and response.json()["resourceType"] == "OperationOutcome"


def test_scope_is_required(partner, api_for):
    bulk_only = api_for(partner, scopes.BULK_MEMBER_MATCH)
    assert post(bulk_only, with_consent(example("member-match-request.json"))).status_code == 403


def test_malformed_input(api, patricia):
    response = api.post(URL, data="{not json", content_type="application/fhir+json")
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    body = with_consent(example("member-match-request.json"))
    body["parameter"] = [p for p in body["parameter"] if p["name"] != "CoverageToMatch"]
    response = post(api, body)
    assert response.status_code == 422 and "CoverageToMatch is missing" in response.content.decode()
    assert post(api, {"resourceType": "Bundle"}).status_code == 400


def test_repeated_failures_are_throttled(api, patricia, settings):
    settings.MEMBER_MATCH_MAX_FAILURES = 3
    body = with_consent(example("member-match-request.json"))
    for birth in ("1974-12-20", "1974-12-21", "1974-12-22"):
        patient_part(body)["birthDate"] = birth
        assert post(api, body).status_code == 422
    patient_part(body)["birthDate"] = "1974-12-25"
    response = post(api, body)
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0 and response.json()["issue"][0]["code"] == "throttled"


def real_patients(count: int) -> list[dict]:
    with gzip.open(SAMPLE / "Patient.ndjson.gz", "rt") as handle:
        patients = [json.loads(line) for _, line in zip(range(count), handle, strict=False)]
    assert len(patients) == count
    return patients


def test_members_loaded_from_the_synthea_data_match_by_their_real_records(api, db):
    """Members as ingest stores them (pdex.ingest.member_columns, Synthea names with digits), card numbers added."""
    from pdex.ingest import member_columns

    patients = real_patients(5)
    for number, patient in enumerate(patients):
        Member.objects.create(member_number=f"SYN{number}", **member_columns(patient))
    chosen = patients[3]
    body = with_consent(example("member-match-request.json"))
    submitted = patient_part(body)
    submitted.update(name=chosen["name"], birthDate=chosen["birthDate"], gender=chosen["gender"])
    coverage = next(p for p in body["parameter"] if p["name"] == "CoverageToMatch")["resource"]
    coverage["identifier"][0]["value"] = "SYN3"
    response = post(api, body)
    assert response.status_code == 200, response.content
    assert response.json()["parameter"][1]["valueReference"]["reference"] == f"Patient/{chosen['id']}"

    coverage["identifier"][0]["value"] = "SYN2"  # someone else's card with this person's demographics
    refused(post(api, body))


def test_coverage_to_link_of_another_payer_fails_the_recipient_cross_check(api, patricia):
    body = with_consent(example("member-match-request.json"))
    link = next(p for p in body["parameter"] if p["name"] == "CoverageToLink")["resource"]
    link["payor"][0]["identifier"]["value"] = "7777777777"
    refused(post(api, body))
    link["payor"][0] = {"display": "New Health Plan"}  # no identifier: nothing to cross-check
    assert post(api, body).status_code == 200


def test_candidate_lookup_uses_indexes_only(db):
    """Every key of the candidate query has an index: with sequential scans disabled, the plan has none."""
    import psycopg
    from django.db import connection

    from matching import store

    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + store.CANDIDATE_SQL, (["DH1"], ["S1"], ["U1"], [date(1974, 12, 25)]))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan and "Index" in plan


def test_a_representative_without_an_allowed_role_is_consent_constrained(api, patricia, partner):
    """HRex (spec §3.4): a consent signed by someone other than the member names them in a provision.actor with
    a power-of-attorney or guardian role; a friend's signature cannot be used, and the reason is recorded."""
    for role, allowed in (("FRND", False), ("HPOWATT", True)):
        body = with_consent(example("member-match-request.json"))
        consent = next(p for p in body["parameter"] if p["name"] == "Consent")["resource"]
        consent["contained"] = [{"resourceType": "RelatedPerson", "id": "rp1",
                                 "patient": {"reference": "Patient/1"}, "name": [{"text": "Jennifer Person"}]}]
        consent["performer"] = [{"reference": "#rp1"}]
        consent["provision"]["actor"].append({"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": role}]},
            "reference": {"reference": "#rp1"}})
        response = post(api, body)
        if allowed:
            assert response.status_code == 200, response.content
            stored = Consent.objects.get(member=patricia, partner=partner)
            assert (stored.representative, stored.representative_role) == ("Jennifer Person", "HPOWATT")
        else:
            refused(response)
            event = AuditEvent.objects.filter(action="member-match").latest("id")
            assert "representative without an allowed role" in event.detail["reasons"]
            assert not Consent.objects.filter(member=patricia).exists()


def test_a_member_block_wins_over_the_consent(api, patricia, partner):
    from consent.services import block_member

    block_member(patricia, None, "member called: share with nobody", actor="member line")
    refused(post(api, with_consent(example("member-match-request.json"))))
    event = AuditEvent.objects.filter(action="member-match").latest("id")
    assert "member blocked sharing" in event.detail["reasons"]
