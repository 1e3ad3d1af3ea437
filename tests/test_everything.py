"""Patient/{id}/$everything: the same rows as an export of the member, paged, under the access rule."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from consent.services import revoke
from exports import rules
from exports.models import ExportJob
from tests.builders import (
    consent_for,
    day,
    days_ago,
    days_from_now,
    encounter,
    instant,
    load_sample_member,
    prior_auth,
    store,
)


@pytest.fixture
def world(db, partner, settings):
    settings.EXPORT_WINDOW_MODE = "cap"
    settings.FHIR_BASE_URL = "http://testserver/fhir"
    member = load_sample_member()
    recent = timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    store(encounter("everything-sensitive", member.fhir_id, recent, security=("PSY",)), member)
    store(prior_auth("everything-pa", member.fhir_id, "approved", changed=recent, period_end=days_from_now(365)),
          member)
    store(prior_auth("everything-pa-denied", member.fhir_id, "denied", changed=recent), member)
    consent = consent_for(member, partner, policy="sensitive")
    return member, consent


def url(member, query: str = "") -> str:
    return f"/fhir/Patient/{member.fhir_id}/$everything" + (f"?{query}" if query else "")


def pages(api, first_url: str) -> list[dict]:
    """Every Bundle of a paged $everything, following `next`."""
    bundles, next_url = [], first_url
    while next_url:
        response = api.get(next_url)
        assert response.status_code == 200, response.content
        bundle = response.json()
        bundles.append(bundle)
        next_link = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        next_url = None
        if next_link:
            parts = urlsplit(next_link[0])
            next_url = f"{parts.path}?{parts.query}"
    return bundles


def matches(bundles: list[dict]) -> dict[str, dict]:
    found = {}
    for bundle in bundles:
        for entry in bundle["entry"]:
            if entry["search"]["mode"] == "match":
                resource = entry["resource"]
                key = f"{resource['resourceType']}/{resource['id']}"
                assert key not in found, f"{key} on two pages"
                found[key] = resource
    return found


def export_of(member, **context_args) -> dict[str, dict]:
    """What a bulk export of this member writes, through the rules' chunk SQL."""
    context = rules.export_context(request_time=timezone.now(), **context_args)
    exported = {}
    for resource_type in context.types:
        sql, params = rules.chunk_query(resource_type, [member.pk], context)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            for (line,) in cursor.fetchall():
                resource = json.loads(line)
                exported[f"{resource['resourceType']}/{resource['id']}"] = resource
    return exported


def test_pages_together_equal_the_export_of_the_member(api, world):
    member, _ = world
    bundles = pages(api, url(member, "_count=20"))
    assert len(bundles) > 2
    found = matches(bundles)
    assert found == export_of(member)
    assert {b["total"] for b in bundles} == {len(found)}
    assert "ExplanationOfBenefit/everything-pa" in found and "ExplanationOfBenefit/everything-pa-denied" not in found
    claims = [r for r in found.values() if r["resourceType"] == "ExplanationOfBenefit" and r["use"] == "claim"]
    assert claims and not any("payment" in c or "total" in c for c in claims)


def test_every_entry_parses_and_each_page_has_a_transmitter_provenance(api, world):
    member, _ = world
    for bundle in pages(api, url(member, "_count=500")):
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        get_fhir_model_class("Bundle").model_validate(bundle)
        page_refs = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                     for e in bundle["entry"] if e["search"]["mode"] == "match"}
        [provenance] = [e["resource"] for e in bundle["entry"]
                        if e["search"]["mode"] == "include" and e["resource"]["resourceType"] == "Provenance"]
        assert {t["reference"] for t in provenance["target"]} == page_refs
        assert provenance["agent"][0]["type"]["coding"][0]["code"] == "transmitter"


def test_next_links_are_stable(api, world):
    member, _ = world
    first = api.get(url(member, "_count=10")).json()
    next_url = urlsplit(next(link["url"] for link in first["link"] if link["relation"] == "next"))
    again = [api.get(f"{next_url.path}?{next_url.query}").json() for _ in range(2)]
    assert [e["fullUrl"] for e in again[0]["entry"]] == [e["fullUrl"] for e in again[1]["entry"]]
    first_ids = {e["fullUrl"] for e in first["entry"] if e["search"]["mode"] == "match"}
    assert not first_ids & {e["fullUrl"] for e in again[0]["entry"] if e["search"]["mode"] == "match"}


def test_a_forged_page_token_is_refused(api, world):
    member, _ = world
    assert api.get(url(member, "_page=abc")).status_code == 400


def test_count_sets_the_page_size(api, world):
    member, _ = world
    bundle = api.get(url(member, "_count=7")).json()
    assert len([e for e in bundle["entry"] if e["search"]["mode"] == "match"]) == 7
    assert api.get(url(member, "_count=0")).status_code == 400


def test_type_limits_the_types(api, world):
    member, _ = world
    found = matches(pages(api, url(member, "_type=Encounter,Condition&_count=1000")))
    assert found and {r["resourceType"] for r in found.values()} == {"Encounter", "Condition"}
    assert found == export_of(member, types=["Encounter", "Condition"])
    assert api.get(url(member, "_type=Basic")).status_code == 400


def test_since_is_on_last_updated_and_capped(api, world):
    member, _ = world
    store(encounter("everything-updated-lately", member.fhir_id, days_ago(400), updated=days_ago(5)), member)
    store(encounter("everything-updated-before", member.fhir_id, days_ago(400), updated=days_ago(60)), member)
    since = days_ago(30).replace(microsecond=0)
    found = matches(pages(api, url(member, f"_since={instant(since)}&_count=1000")))
    assert found == export_of(member, since=since)
    assert "Encounter/everything-updated-lately" in found and "Encounter/everything-updated-before" not in found
    assert all(r["meta"]["lastUpdated"] >= instant(since) for r in found.values())
    old = api.get(url(member, "_since=2001-01-01T00:00:00Z&_count=5")).json()
    outcome = [e["resource"] for e in old["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["issue"][0]["severity"] == "information"


def test_start_and_end_bound_the_date_of_service(api, world):
    member, _ = world
    start, end = day(days_ago(730)), day(days_ago(365))   # the year before last, always inside the window
    store(encounter("everything-in-range", member.fhir_id, days_ago(500)), member)
    store(encounter("everything-before", member.fhir_id, days_ago(800)), member)
    store(encounter("everything-after", member.fhir_id, days_ago(300)), member)
    found = matches(pages(api, url(member, f"start={start}&end={end}&_type=Encounter&_count=1000")))
    assert "Encounter/everything-in-range" in found
    assert not {"Encounter/everything-before", "Encounter/everything-after"} & set(found)
    for resource in found.values():
        assert start <= resource["period"]["start"][:10] <= end


def test_regular_consent_withholds_sensitive_resources(api, world, partner):
    member, _ = world
    assert "Encounter/everything-sensitive" in matches(pages(api, url(member, "_type=Encounter&_count=1000")))
    consent_for(member, partner, policy="regular")
    assert "Encounter/everything-sensitive" not in matches(pages(api, url(member, "_type=Encounter&_count=1000")))


def test_after_revocation_the_member_is_not_found(api, world):
    member, consent = world
    revoke(consent, "member asked")
    response = api.get(url(member))
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_another_partner_gets_not_found(world, make_partner, api_for):
    member, _ = world
    other = api_for(make_partner("Other Plan"))
    assert other.get(url(member)).status_code == 404
    assert other.get("/fhir/Patient/nobody/$everything").status_code == 404


def test_unknown_parameters_are_refused_unless_lenient(api, world):
    member, _ = world
    assert api.get(url(member, "color=blue")).status_code == 400
    response = api.get(url(member, "color=blue&_count=1"), HTTP_PREFER="handling=lenient")
    assert response.status_code == 200
    outcome = [e["resource"] for e in response.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert "color" in outcome[0]["issue"][0]["diagnostics"]


def test_post_with_parameters(api, world):
    member, _ = world
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueCode": "Patient"},
                                                        {"name": "_count", "valueInteger": 5}]}
    response = api.post(url(member), data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code == 200, response.content
    assert [e["resource"]["resourceType"] for e in response.json()["entry"] if e["search"]["mode"] == "match"] == [
        "Patient"]


def test_scopes_narrow_the_types(world, partner, api_for):
    member, _ = world
    client = api_for(partner, "system/Patient.rs system/Encounter.rs")
    found = matches(pages(client, url(member, "_count=1000")))
    assert {r["resourceType"] for r in found.values()} == {"Patient", "Encounter"}


def test_respond_async_starts_an_everything_export(api, world, partner):
    member, _ = world
    response = api.get(url(member, "_type=Encounter"), HTTP_PREFER="respond-async")
    assert response.status_code == 202
    job = ExportJob.objects.get(partner=partner)
    assert job.kind == ExportJob.Kind.EVERYTHING
    assert response["Content-Location"].endswith(f"/bulkstatus/{job.id}")
    assert job.params["patients"] == [f"Patient/{member.fhir_id}"] and job.params["types"] == ["Encounter"]


def test_respond_async_narrows_types_to_the_scopes_and_reports_a_raised_since(world, partner, api_for):
    member, _ = world
    client = api_for(partner, "system/Patient.rs system/Encounter.rs")
    response = client.get(url(member, "_since=2001-01-01T00:00:00Z"), HTTP_PREFER="respond-async")
    assert response.status_code == 202
    job = ExportJob.objects.get(partner=partner)
    assert job.params["types"] == ["Patient", "Encounter"]
    assert [m["severity"] for m in job.messages] == ["information"]


def test_capability_statement_lists_everything(api, world):
    statement = api.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"} in \
        patient["operation"]


def test_a_type_the_member_has_none_of_returns_nothing(api, world):
    member, _ = world
    bundle = api.get(url(member, "_type=Goal")).json()
    assert bundle["total"] == 0 and bundle["entry"] == []


def test_a_page_token_only_works_for_its_own_search(api, world):
    member, _ = world
    first = api.get(url(member, "_count=10")).json()
    token = parse_qs(urlsplit(next(x["url"] for x in first["link"] if x["relation"] == "next")).query)["_page"][0]
    assert api.get(url(member, f"_count=10&_page={token}")).status_code == 200
    assert api.get(url(member, f"_count=10&_type=Encounter&_page={token}")).status_code == 400
