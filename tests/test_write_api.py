"""The write API of our own systems: transaction and batch Bundles, PUT and DELETE, through the ingest path;
internal clients only (a partner's token never writes)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from pdex import partners
from pdex.auth import scopes
from pdex.models import AuditEvent, Member, Resource, Tombstone
from pdex.write import access
from tests.builders import observation, patient
from tests.test_member_identity import TYPO, ana, ana_coverage, match_request, member_match
from tests.test_member_identity import our_plan as _our_plan  # noqa: F401 - the same plan settings here

FHIR = "application/fhir+json"


@pytest.fixture
def claims_system(db):
    return access.register_internal_client("claims warehouse", source_format="x12837")


def writer_api(client, scope: str | None = None) -> APIClient:
    token = access.issue_token(client)
    if scope is not None:
        token.scope = scope
        token.save()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}")
    return api


@pytest.fixture
def writer(claims_system) -> APIClient:
    return writer_api(claims_system)


def post_bundle(api: APIClient, kind: str, *entries: dict):
    body = {"resourceType": "Bundle", "type": kind, "entry": list(entries)}
    return api.post("/fhir", data=json.dumps(body), content_type=FHIR)


def put(resource: dict, url: str | None = None, full_url: str | None = None) -> dict:
    entry = {"resource": resource,
             "request": {"method": "PUT", "url": url or f"{resource['resourceType']}/{resource['id']}"}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_a_transaction_updating_a_coverage_makes_the_member_matchable_by_the_new_id_at_once(writer, api):
    assert post_bundle(writer, "transaction", put(ana()), put(ana_coverage())).status_code == 200
    assert member_match(api, match_request(member_id="A77001234", given=TYPO)) == "Patient/p-ana"
    response = post_bundle(writer, "transaction", put(ana_coverage(member_id="A77009999")))
    assert response.status_code == 200, response.content
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    assert member_match(api, match_request(member_id="A77009999", given=TYPO)) == "Patient/p-ana"
    assert member_match(api, match_request(member_id="A77001234", given=TYPO)) is None


def test_a_transaction_failing_half_way_leaves_nothing_written(writer):
    good = put(patient("p-tx"))
    also_good = put(observation("obs-tx", "p-tx", "2025-01-02"))
    invalid = put({"resourceType": "Observation", "id": "obs-bad", "status": "final", "issued": "not a time",
                   "code": {"text": "x"}, "subject": {"reference": "Patient/p-tx"}})
    response = post_bundle(writer, "transaction", good, also_good, invalid)
    assert response.status_code == 422
    issues = response.json()["issue"]
    assert [i["expression"] for i in issues[1:]] == [["Bundle.entry[2]"]]
    assert not Resource.objects.filter(fhir_id__in=["p-tx", "obs-tx", "obs-bad"]).exists()
    assert not Member.objects.filter(fhir_id="p-tx").exists()


def test_a_failure_inside_the_database_rolls_the_whole_transaction_back(writer, claims_system):
    post_bundle(writer, "transaction", put(patient("p-a")), put(patient("p-b")))
    twin = {"type": {"text": "card"}, "system": "urn:card", "value": "C-1"}
    for patient_id in ("p-a", "p-b"):  # two Coverages with one identifier: a conditional update is ambiguous
        cov = ana_coverage(f"cov-{patient_id}")
        cov["beneficiary"] = {"reference": f"Patient/{patient_id}"}
        cov["identifier"] = [twin]
        post_bundle(writer, "transaction", put(cov))
    conditional = put({**ana_coverage("ignored"), "identifier": [twin]}, url="Coverage?identifier=urn:card|C-1")
    response = post_bundle(writer, "transaction", put(patient("p-c")), conditional)
    assert response.status_code == 412
    assert not Resource.objects.filter(fhir_id="p-c").exists()


def test_create_with_urn_references_and_conditional_update_on_identifier(writer):
    created = post_bundle(writer, "transaction",
                          {"fullUrl": "urn:uuid:0b7d1c1e-0000-4000-8000-000000000001",
                           "resource": patient("placeholder"), "request": {"method": "POST", "url": "Patient"}},
                          {"resource": {**observation("x", "unused", "2025-03-01"),
                                        "subject": {"reference": "urn:uuid:0b7d1c1e-0000-4000-8000-000000000001"}},
                           "request": {"method": "POST", "url": "Observation"}})
    assert created.status_code == 200, created.content
    entries = created.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "201 Created"]
    patient_id = entries[0]["response"]["location"].split("/")[1]
    obs = Resource.objects.get(resource_type="Observation", fhir_id=entries[1]["response"]["location"].split("/")[1])
    assert obs.body["subject"]["reference"] == f"Patient/{patient_id}"
    assert obs.member.fhir_id == patient_id  # the member link, extracted as load_ndjson does
    assert obs.source_format == "x12837"  # the client's source format, for the transmitter Provenance
    cov = {**ana_coverage("cov-cond"), "beneficiary": {"reference": f"Patient/{patient_id}"}}
    url = "Coverage?identifier=urn:oid:1.2.840.114350.1.13.99.3.7.5.737384.14|A77001234"
    first = post_bundle(writer, "transaction", put(cov, url=url))
    again = post_bundle(writer, "transaction", put({**cov, "id": "other", "status": "cancelled"}, url=url))
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    assert again.json()["entry"][0]["response"]["status"] == "200 OK"
    stored = Resource.objects.get(resource_type="Coverage")
    assert (stored.fhir_id, stored.body["status"]) == ("cov-cond", "cancelled")


def test_a_batch_answers_each_entry_and_keeps_the_good_ones(writer):
    response = post_bundle(writer, "batch", put(patient("p-batch")),
                           {"request": {"method": "GET", "url": "Patient/p-batch"}},
                           put({"resourceType": "Observation", "id": "o-1", "status": "final"}, url="Observation/o-2"))
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "400 Bad Request", "400 Bad Request"]
    assert entries[1]["response"]["outcome"]["issue"][0]["code"] == "not-supported"
    assert Resource.objects.filter(fhir_id="p-batch").exists()


def test_put_and_delete_keep_a_tombstone_and_are_audited(writer):
    body = observation("o-put", "p-put", "2025-05-05")
    post_bundle(writer, "transaction", put(patient("p-put")))
    response = writer.put("/fhir/Observation/o-put", data=json.dumps(body), content_type=FHIR)
    assert response.status_code == 201, response.content
    assert json.loads(response.content)["meta"]["lastUpdated"]
    assert writer.put("/fhir/Observation/o-put", data=json.dumps(body), content_type=FHIR).status_code == 200
    assert writer.delete("/fhir/Observation/o-put").status_code == 204
    assert not Resource.objects.filter(fhir_id="o-put").exists()
    tombstone = Tombstone.objects.get(resource_type="Observation", fhir_id="o-put")
    assert (tombstone.member.fhir_id, tombstone.deleted_by) == ("p-put", "claims warehouse")
    assert writer.delete("/fhir/Observation/o-put").status_code == 204  # idempotent
    assert set(AuditEvent.objects.filter(action__startswith="write-").values_list("action", flat=True)) == {
        "write-bundle", "write-update", "write-delete"}
    # Written again: no longer deleted.
    writer.put("/fhir/Observation/o-put", data=json.dumps(body), content_type=FHIR)
    assert not Tombstone.objects.filter(fhir_id="o-put").exists()


def test_a_partner_token_never_writes_whatever_its_scopes(partner, api_for, writer):
    forged = api_for(partner, scopes="system/*.write system/*.read")
    assert post_bundle(forged, "transaction", put(patient("p-x"))).status_code == 403
    assert forged.put("/fhir/Patient/p-x", data=json.dumps(patient("p-x")), content_type=FHIR).status_code == 403
    assert forged.delete("/fhir/Patient/p-x").status_code == 403
    assert APIClient().post("/fhir", data="{}", content_type=FHIR).status_code == 401
    assert not Resource.objects.filter(fhir_id="p-x").exists()
    # A partner's policy can never hold a write scope: it keeps the read part only.
    assert partners.clean_scopes("system/*.* system/Claim.cud system/Patient.read") == "system/*.rs system/Patient.read"
    assert scopes.grant(["system/*.write"], partners.clean_scopes("system/*.*").split()) == []


def test_scopes_limit_an_internal_client_per_type_and_action(claims_system):
    narrow = writer_api(claims_system, scope="system/Observation.cu")
    assert post_bundle(narrow, "transaction", put(patient("p-n"))).status_code == 403
    assert post_bundle(narrow, "transaction", put(observation("o-n", "p-n", "2025-01-01"))).status_code == 200
    assert narrow.delete("/fhir/Observation/o-n").status_code == 403
    read_only = writer_api(claims_system, scope="system/*.read")
    assert read_only.put("/fhir/Patient/p-n", data=json.dumps(patient("p-n")), content_type=FHIR).status_code == 403


def test_an_unknown_type_or_method_is_refused_cleanly(writer):
    assert writer.put("/fhir/NoSuchType/1", data="{}", content_type=FHIR).status_code == 404
    assert writer.patch("/fhir/Patient/1", data="{}", content_type=FHIR).status_code == 405
    assert writer.post("/fhir", data=json.dumps({"resourceType": "Patient"}), content_type=FHIR).status_code == 400
    assert writer.post("/fhir", data="not json", content_type=FHIR).status_code == 400
    nul = {"request": {"method": "DELETE", "url": "Patient?identifier=a|\u0000"}}
    assert post_bundle(writer, "transaction", nul).status_code == 400


def test_internal_client_command_registers_and_issues_a_token(db):
    out = io.StringIO()
    call_command("internal_client", "pa system", "--scope", "system/Claim.cud system/ClaimResponse.cud",
                 "--source-format", "x12278", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.delete("/fhir/Claim/nothing").status_code == 204
    assert api.delete("/fhir/Patient/nothing").status_code == 403
