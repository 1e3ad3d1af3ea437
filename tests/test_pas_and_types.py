"""Prior authorizations as Da Vinci PAS records them (Claim + ClaimResponse, use=preauthorization) under the one PA
rule; the types ClaimResponse, Task, MedicationStatement; written through the write API (the ingest path)."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.utils import timezone

from exports import rules
from pdex.extract import PAS_REVIEW_ACTION_CODE_URL, PAS_REVIEW_ACTION_URL, extract_configured, service_period
from pdex.models import Resource
from pdex.write import access, bundle
from tests.builders import days_ago, document, instant, make_member, years_ago

X12_306 = "https://codesystem.x12.org/005010/306"
DECISION = {"approved": "A1", "denied": "A3", "pending": "A4"}
PROFESSIONAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]}


def pas_claim(fhir_id: str, patient_id: str, *, created, documents: tuple[str, ...] = (), drug: bool = False) -> dict:
    product = ({"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"} if drug
               else {"system": "http://www.ama-assn.org/go/cpt", "code": "99213"})
    body = {
        "resourceType": "Claim", "id": fhir_id, "status": "active", "type": PROFESSIONAL, "use": "preauthorization",
        "patient": {"reference": f"Patient/{patient_id}"}, "created": instant(created),
        "provider": {"display": "Clinic"}, "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Plan"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [product]}}],
    }
    if documents:
        body["supportingInfo"] = [
            {"sequence": n + 1, "category": {"coding": [{"code": "additionalInformation"}]},
             "valueReference": {"reference": f"DocumentReference/{doc}"}} for n, doc in enumerate(documents)]
    return body


def pas_response(fhir_id: str, patient_id: str, claim_id: str, decision: str, *, decided,
                 valid_until=None) -> dict:
    body = {
        "resourceType": "ClaimResponse", "id": fhir_id, "status": "active", "type": PROFESSIONAL,
        "use": "preauthorization", "patient": {"reference": f"Patient/{patient_id}"}, "created": instant(decided),
        "insurer": {"display": "Old Plan"}, "request": {"reference": f"Claim/{claim_id}"},
        "outcome": "error" if decision == "denied" else "complete",
        "item": [{"itemSequence": 1, "adjudication": [{
            "category": {"coding": [{"code": "submitted"}]},
            "extension": [{"url": PAS_REVIEW_ACTION_URL, "extension": [{
                "url": PAS_REVIEW_ACTION_CODE_URL,
                "valueCodeableConcept": {"coding": [{"system": X12_306, "code": DECISION[decision]}]}}]}]}]}],
    }
    if valid_until is not None:
        body["preAuthPeriod"] = {"start": instant(decided), "end": instant(valid_until)}
    return body


def transaction(*resources: dict) -> None:
    client = access.register_internal_client(f"pa system {timezone.now().timestamp()}")
    writer = access.Writer(name=client.name, granted=("system/*.write",))
    entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    result = bundle.apply_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries}, writer)
    assert all(o.status_code < 300 for o in result.outcomes), result.outcomes


def exported_ids(resource_type: str, member_ids: list[int], *, regular: tuple[int, ...] = ()) -> set[str]:
    context = rules.export_context(request_time=timezone.now(), regular_member_ids=regular)
    sql, params = rules.chunk_query(resource_type, member_ids, context)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {json.loads(row[0])["id"] for row in cursor.fetchall()}


@pytest.fixture
def member(db):
    return make_member("p-pas")


def test_a_pas_pair_follows_the_pa_rule_decided_13_months_ago_out_11_months_ago_in_denied_out(member):
    ended = days_ago(60)  # every authorization here ran out two months ago: only a recent change keeps it
    transaction(
        pas_claim("c-13", "p-pas", created=days_ago(400), documents=("doc-13",)),
        pas_response("cr-13", "p-pas", "c-13", "approved", decided=days_ago(396), valid_until=ended),
        pas_claim("c-11", "p-pas", created=days_ago(340), documents=("doc-11",)),
        pas_response("cr-11", "p-pas", "c-11", "approved", decided=days_ago(335), valid_until=ended),
        pas_claim("c-denied", "p-pas", created=days_ago(40)),
        pas_response("cr-denied", "p-pas", "c-denied", "denied", decided=days_ago(30)),
        pas_claim("c-drug", "p-pas", created=days_ago(40), drug=True),
        pas_response("cr-drug", "p-pas", "c-drug", "approved", decided=days_ago(30)),
        pas_claim("c-waiting", "p-pas", created=days_ago(10)),  # no decision yet: pending, in force
        # The supporting documents are old: only their PA's rule decides, never the window.
        document("doc-13", "p-pas", years_ago(7)), document("doc-11", "p-pas", years_ago(7)),
    )
    claim = Resource.objects.get(resource_type="Claim", fhir_id="c-11")
    assert (claim.eob_use, claim.pa_status) == ("preauthorization", "approved")  # the ClaimResponse's decision
    assert Resource.objects.get(fhir_id="c-denied").pa_status == "denied"
    assert Resource.objects.get(fhir_id="cr-drug").pa_drug  # a response to a drug PA is a drug PA
    assert exported_ids("Claim", [member.pk]) == {"c-11", "c-waiting"}
    assert exported_ids("ClaimResponse", [member.pk]) == {"cr-11"}
    assert exported_ids("DocumentReference", [member.pk]) == {"doc-11"}


def task(fhir_id: str, patient_id: str, when) -> dict:
    return {"resourceType": "Task", "id": fhir_id, "status": "completed", "intent": "order",
            "for": {"reference": f"Patient/{patient_id}"}, "authoredOn": instant(when),
            "executionPeriod": {"start": instant(when)}}


def medication_statement(fhir_id: str, patient_id: str, when, *, sensitive: bool = False) -> dict:
    body = {"resourceType": "MedicationStatement", "id": fhir_id, "status": "active",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "197361"}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": instant(when)}
    if sensitive:
        body["meta"] = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "R"}]}
    return body


def claim_response(fhir_id: str, patient_id: str, when) -> dict:
    return {"resourceType": "ClaimResponse", "id": fhir_id, "status": "active", "type": PROFESSIONAL, "use": "claim",
            "patient": {"reference": f"Patient/{patient_id}"}, "created": instant(when),
            "insurer": {"display": "Old Plan"}, "outcome": "complete",
            "payment": {"type": {"text": "complete"}, "amount": {"value": 80.0, "currency": "USD"}}}


def test_task_medication_statement_and_claim_response_have_dates_of_service_windows_and_sensitivity(member):
    recent, ancient = days_ago(100), years_ago(7)
    assert service_period(task("t", "p", recent))[0] is not None
    assert service_period(medication_statement("m", "p", recent))[0] is not None
    assert service_period(claim_response("r", "p", recent))[0] is not None
    assert extract_configured(task("t", "p-pas", recent)).patient_id == "p-pas"  # a Task names its member in `for`
    transaction(
        task("t-new", "p-pas", recent), task("t-old", "p-pas", ancient),
        medication_statement("ms-new", "p-pas", recent), medication_statement("ms-old", "p-pas", ancient),
        medication_statement("ms-sens", "p-pas", recent, sensitive=True),
        claim_response("cr-new", "p-pas", recent), claim_response("cr-old", "p-pas", ancient),
    )
    assert exported_ids("Task", [member.pk]) == {"t-new"}
    assert exported_ids("MedicationStatement", [member.pk]) == {"ms-new", "ms-sens"}
    assert exported_ids("MedicationStatement", [member.pk], regular=(member.pk,)) == {"ms-new"}
    assert exported_ids("ClaimResponse", [member.pk]) == {"cr-new"}
    context = rules.export_context(request_time=timezone.now())
    sql, params = rules.chunk_query("ClaimResponse", [member.pk], context)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        [line] = [json.loads(row[0]) for row in cursor.fetchall()]
    assert "payment" not in line  # non-financial, as claims are


def test_the_new_types_are_exportable_and_in_the_capability_statement(client, api):
    statement = client.get("/fhir/metadata").json()
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"ClaimResponse", "Task", "MedicationStatement", "Binary"} <= types
    response = api.get("/fhir/$export?_type=ClaimResponse,Task,MedicationStatement", HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
