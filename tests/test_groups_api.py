"""GET /fhir/Group/{id} and /fhir/Group?…: a partner sees its own Groups only (others are 404), and the
whole bulk match end to end over HTTP with a real Celery worker."""

from __future__ import annotations

import copy
import json
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import requests
from rest_framework.test import APIClient

from matching import groups
from matching.models import MemberMatchGroup
from pdex.auth import scopes
from pdex.models import Member
from tests.conftest import issue_token

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
OLD_NPI = "9876543210"
NEW_NPI = "0123456789"


def make_group(partner, code: str = "match", name: str = "Matched members") -> MemberMatchGroup:
    group = MemberMatchGroup(partner=partner, code=code, name=name, identifier_system=groups.NPI_SYSTEM,
                             identifier_value=partner.npi)
    group.resource = groups.group_resource(group_id=group.id, code=code, partner=partner, run_date=date(2026, 7, 15),
                                           members=[], our_references=[])
    group.save()
    return group


@pytest.fixture
def new_plan(make_partner):
    return make_partner("New Health Plan", npi=NEW_NPI)


@pytest.fixture
def other_plan(make_partner):
    return make_partner("Other Plan", npi="5555555555")


def client_for(partner, scope: str = "system/Group.rs") -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(partner, scopes=scope)}")
    return api


def test_read_own_group_and_404_for_anyone_else(new_plan, other_plan):
    group = make_group(new_plan)
    response = client_for(new_plan).get(f"/fhir/Group/{group.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == group.id and body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"]
    assert client_for(other_plan).get(f"/fhir/Group/{group.id}").status_code == 404
    missing = client_for(new_plan).get("/fhir/Group/does-not-exist")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("scope,status", [
    ("system/Group.read", 200), (scopes.MATCH_GROUP_EXPORT, 200),
    ("system.Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match", 200),
    (scopes.MEMBER_MATCH, 403),
])
def test_group_scopes(new_plan, scope, status):
    group = make_group(new_plan)
    assert client_for(new_plan, scope).get(f"/fhir/Group/{group.id}").status_code == status


def test_search_is_restricted_to_the_callers_groups(new_plan, other_plan):
    match = make_group(new_plan)
    nomatch = make_group(new_plan, "nomatch", "Not Matched members")
    make_group(other_plan)
    api = client_for(new_plan)

    def ids(query: str) -> list[str]:
        bundle = api.get(f"/fhir/Group?{query}").json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        assert bundle["total"] == len(bundle["entry"])
        return sorted(entry["resource"]["id"] for entry in bundle["entry"])

    assert ids("") == sorted([match.id, nomatch.id])
    assert ids("code=match") == [match.id]
    assert ids(f"code={groups.RESULT_SYSTEM}|nomatch") == [nomatch.id]
    assert ids("code=match,nomatch") == sorted([match.id, nomatch.id])
    assert ids(f"characteristic={groups.RESULT_SYSTEM}|match") == [match.id]
    assert ids(f"characteristic-value-reference:identifier={groups.NPI_SYSTEM}|{NEW_NPI}") == [match.id]
    assert ids(f"identifier={groups.NPI_SYSTEM}|{NEW_NPI}") == sorted([match.id, nomatch.id])
    assert ids("identifier=5555555555") == []
    assert ids(f"_id={match.id}") == [match.id]
    assert ids("name=not") == [nomatch.id]
    assert ids("_lastUpdated=ge2020-01-01") == sorted([match.id, nomatch.id])
    assert ids("_lastUpdated=lt2020-01-01") == []
    assert client_for(other_plan).get("/fhir/Group?code=match").json()["total"] == 1


def test_search_paging_links(new_plan):
    for _ in range(5):
        make_group(new_plan)
    api = client_for(new_plan)
    first = api.get("/fhir/Group?code=match&_count=2").json()
    assert first["total"] == 5 and len(first["entry"]) == 2
    relations = {link["relation"]: link["url"] for link in first["link"]}
    assert "next" in relations and "previous" not in relations
    seen = [e["resource"]["id"] for e in first["entry"]]
    url = relations["next"]
    while url:
        page = api.get(url.replace("http://testserver", "")).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == 5
    assert api.get("/fhir/Group?_count=abc").status_code == 400


# --- end to end over HTTP with a real worker ----------------------------------------------------------

def around_today() -> dict:
    today = date.today()
    return {"start": (today - timedelta(days=10)).isoformat(), "end": (today + timedelta(days=30)).isoformat()}


@pytest.mark.django_db(transaction=True)
def test_bulk_member_match_end_to_end(live_server, celery_worker_process, settings, make_partner):
    settings.FHIR_BASE_URL = live_server.url + "/fhir"
    settings.PAYER_NPI = OLD_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    worker = celery_worker_process(extra_env={"PAYER_NPI": OLD_NPI, "MEMBER_ID_SYSTEM": settings.MEMBER_ID_SYSTEM,
                                              "FHIR_BASE_URL": settings.FHIR_BASE_URL, "MATCH_BATCH_SIZE": "2"})
    new_plan = make_partner("New Health Plan", npi=NEW_NPI)
    other = make_partner("Other Plan", npi="5555555555")
    Member.objects.create(fhir_id="pat-1001", umb="UMB-1001", member_number="DH10001235", family="person",
                          given="patricia ann", birth_date=date(1974, 12, 25), gender="female")
    Member.objects.create(fhir_id="pat-2002", umb="UMB-2002", member_number="DH10001236", family="smith",
                          given="william john", birth_date=date(1958, 12, 25), gender="male")
    Member.objects.create(fhir_id="pat-4004", umb="UMB-4004", member_number="DH10001237", family="noway",
                          given="janis noelle", birth_date=date(1956, 12, 25), gender="female")
    body = json.loads((EXAMPLES / "bulk-member-match-request.json").read_text())
    for bundle in body["parameter"][:3]:  # the fourth keeps its expired 2025 consent
        consent = next(p for p in bundle["part"] if p["name"] == "Consent")["resource"]
        consent["provision"]["period"] = around_today()
    headers = {"Authorization": f"Bearer {issue_token(new_plan)}", "Content-Type": "application/fhir+json"}

    kick_off = requests.post(f"{settings.FHIR_BASE_URL}/Group/$bulk-member-match", data=json.dumps(body),
                             headers={**headers, "Prefer": "respond-async"}, timeout=30)
    assert kick_off.status_code == 202, kick_off.text
    status_url = kick_off.headers["Content-Location"]
    assert status_url.startswith(settings.FHIR_BASE_URL + "/bulkstatus/")

    deadline = time.monotonic() + 90
    while True:
        poll = requests.get(status_url, headers=headers, timeout=30)
        if poll.status_code != 202:
            break
        assert poll.headers["X-Progress"].startswith(("queued", "members"))
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(float(poll.headers.get("Retry-After", "1")))
    assert poll.status_code == 200, poll.text
    manifest = poll.json()
    assert manifest["requiresAccessToken"] is True
    assert [item["type"] for item in manifest["output"]] == ["Group", "Parameters"]

    group_file = requests.get(manifest["output"][0]["url"], headers=headers, timeout=30)
    assert group_file.status_code == 200
    by_code = {g["code"]["coding"][0]["code"]: g for g in map(json.loads, group_file.text.splitlines())}
    assert set(by_code) == {"match", "nomatch", "consentconstraint"}
    assert sorted(m["entity"]["reference"] for m in by_code["match"]["member"]) == ["Patient/pat-1001",
                                                                                   "Patient/pat-2002"]
    assert [m["entity"]["reference"] for m in by_code["nomatch"]["member"]] == ["#3"]
    assert [m["entity"]["reference"] for m in by_code["consentconstraint"]["member"]] == ["#4"]
    parameters = json.loads(requests.get(manifest["output"][1]["url"], headers=headers, timeout=30).text)
    assert [p["name"] for p in parameters["parameter"]] == ["MatchedMembers", "NonMatchedMembers",
                                                            "ConsentConstrainedMembers"]

    match_id = by_code["match"]["id"]
    read = requests.get(f"{settings.FHIR_BASE_URL}/Group/{match_id}", headers=headers, timeout=30)
    assert read.status_code == 200 and read.json()["id"] == match_id
    search = requests.get(f"{settings.FHIR_BASE_URL}/Group?code=match", headers=headers, timeout=30).json()
    assert [e["resource"]["id"] for e in search["entry"]] == [match_id]

    stranger = {"Authorization": f"Bearer {issue_token(other)}"}
    for url in (f"{settings.FHIR_BASE_URL}/Group/{match_id}", status_url, manifest["output"][0]["url"]):
        assert requests.get(url, headers=stranger, timeout=30).status_code == 404
    assert requests.get(f"{settings.FHIR_BASE_URL}/Group", headers=stranger, timeout=30).json()["total"] == 0
    assert copy.deepcopy(by_code["match"])["characteristic"][0]["valueReference"]["identifier"]["value"] == NEW_NPI


def test_metadata_lists_the_match_operations_and_group_search(client):
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"name": "member-match", "definition": scopes.MEMBER_MATCH} in resources["Patient"]["operation"]
    assert {"name": "bulk-member-match", "definition": scopes.BULK_MEMBER_MATCH} in resources["Group"]["operation"]
    assert {i["code"] for i in resources["Group"]["interaction"]} >= {"read", "search-type"}
    assert {p["name"] for p in resources["Group"]["searchParam"]} >= {"_id", "identifier", "code", "name",
                                                                       "_lastUpdated"}


def test_search_by_post(new_plan, other_plan):
    match = make_group(new_plan)
    make_group(new_plan, "nomatch", "Not Matched members")
    make_group(other_plan)
    response = client_for(new_plan).post("/fhir/Group/_search", data="code=match",
                                         content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    bundle = response.json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [match.id]
    assert bundle["link"][0]["url"].startswith("http://testserver/fhir/Group?")
