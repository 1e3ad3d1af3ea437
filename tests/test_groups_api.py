"""GET /fhir/Group/{id} and /fhir/Group?…: a partner sees its own Groups only (others are 404), and the
whole bulk match end to end over HTTP with a real Celery worker."""

from __future__ import annotations

import copy
import json
import time

import pytest
import requests

from matching import groups
from matching.models import MemberMatchGroup
from pdex.auth import scopes
from tests.builders import EXAMPLE_PAYER_NPI, bulk_match_request, day, days_ago, example_members
from tests.conftest import issue_token

GROUP_READ = "system/Group.rs"


def make_group(partner, code: str = "match", name: str = "Matched members") -> MemberMatchGroup:
    group = MemberMatchGroup(partner=partner, code=code, name=name, identifier_system=groups.NPI_SYSTEM,
                             identifier_value=partner.npi)
    group.resource = groups.group_resource(group_id=group.id, code=code, partner=partner,
                                           run_date=days_ago(1).date(), members=[], our_references=[])
    group.save()
    return group


@pytest.fixture
def other_plan(make_partner):
    return make_partner("Other Plan", npi="5555555555")


def test_read_own_group_and_404_for_anyone_else(partner, other_plan, api_for):
    group = make_group(partner)
    response = api_for(partner, GROUP_READ).get(f"/fhir/Group/{group.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == group.id and body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"]
    assert api_for(other_plan, GROUP_READ).get(f"/fhir/Group/{group.id}").status_code == 404
    missing = api_for(partner, GROUP_READ).get("/fhir/Group/does-not-exist")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("scope,status", [
    ("system/Group.read", 200), (scopes.MATCH_GROUP_EXPORT, 200),
    ("system.Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match", 200),
    (scopes.MEMBER_MATCH, 403),
])
def test_group_scopes(partner, api_for, scope, status):
    group = make_group(partner)
    assert api_for(partner, scope).get(f"/fhir/Group/{group.id}").status_code == status


def test_search_is_restricted_to_the_callers_groups(partner, other_plan, api_for):
    match = make_group(partner)
    nomatch = make_group(partner, "nomatch", "Not Matched members")
    make_group(other_plan)
    api = api_for(partner, GROUP_READ)

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
    assert ids(f"characteristic-value-reference:identifier={groups.NPI_SYSTEM}|{partner.npi}") == [match.id]
    assert ids(f"identifier={groups.NPI_SYSTEM}|{partner.npi}") == sorted([match.id, nomatch.id])
    assert ids("identifier=5555555555") == []
    assert ids(f"_id={match.id}") == [match.id]
    assert ids("name=not") == [nomatch.id]
    assert ids(f"_lastUpdated=ge{day(days_ago(1))}") == sorted([match.id, nomatch.id])
    assert ids(f"_lastUpdated=lt{day(days_ago(1))}") == []
    assert api_for(other_plan, GROUP_READ).get("/fhir/Group?code=match").json()["total"] == 1


def test_search_paging_links(partner, api_for):
    for _ in range(5):
        make_group(partner)
    api = api_for(partner, GROUP_READ)
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

@pytest.mark.django_db(transaction=True)
def test_bulk_member_match_end_to_end(live_server, celery_worker_process, settings, partner, make_partner):
    settings.FHIR_BASE_URL = live_server.url + "/fhir"
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    worker = celery_worker_process(extra_env={"PAYER_NPI": EXAMPLE_PAYER_NPI,
                                              "MEMBER_ID_SYSTEM": settings.MEMBER_ID_SYSTEM,
                                              "FHIR_BASE_URL": settings.FHIR_BASE_URL, "MATCH_BATCH_SIZE": "2"})
    other = make_partner("Other Plan", npi="5555555555")
    example_members()
    body = bulk_match_request()  # members 1–3 consent now; member 4's consent has expired
    headers = {"Authorization": f"Bearer {issue_token(partner)}", "Content-Type": "application/fhir+json"}

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
    assert copy.deepcopy(by_code["match"])["characteristic"][0]["valueReference"]["identifier"]["value"] == partner.npi


def test_metadata_lists_the_match_operations_and_group_search(client):
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"name": "member-match", "definition": scopes.MEMBER_MATCH} in resources["Patient"]["operation"]
    assert {"name": "bulk-member-match", "definition": scopes.BULK_MEMBER_MATCH} in resources["Group"]["operation"]
    assert {i["code"] for i in resources["Group"]["interaction"]} >= {"read", "search-type"}
    assert {p["name"] for p in resources["Group"]["searchParam"]} >= {"_id", "identifier", "code", "name",
                                                                       "_lastUpdated"}


def test_search_by_post(partner, other_plan, api_for):
    match = make_group(partner)
    make_group(partner, "nomatch", "Not Matched members")
    make_group(other_plan)
    response = api_for(partner, GROUP_READ).post("/fhir/Group/_search", data="code=match",
                                         content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    bundle = response.json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [match.id]
    assert bundle["link"][0]["url"].startswith("http://testserver/fhir/Group?")
