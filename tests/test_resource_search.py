"""Per-resource search and read: US Core parameters, paging, _include/_revinclude, the access rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class

from consent.services import revoke
from exports import rules
from exports.retrieval.search import SEARCHABLE_TYPES
from tests.builders import (
    REQUEST_TIME,
    claim_eob,
    consent_for,
    day,
    days_ago,
    days_from_now,
    encounter,
    load_sample_member,
    make_member,
    observation,
    prior_auth,
    provenance,
    shared,
    store,
    years_ago,
)

# The member's data, dated relative to today: the API judges it against the real clock (a five-year window).
FIRST_VISIT = days_ago(600)          # s-enc-1
SPLIT = days_ago(450)                # a day between the first visit and the later ones
LATER_VISITS = days_ago(300)         # s-enc-2, s-enc-psy
LABS_FROM = datetime.combine((days_ago(500)).date(), datetime.min.time(), UTC)  # s-obs-0 … s-obs-11, a day apart
CLAIM_DAY = days_ago(700)            # s-eob


@pytest.fixture
def world(db, partner, settings):
    settings.EXPORT_WINDOW_MODE = "cap"
    settings.FHIR_BASE_URL = "http://testserver/fhir"
    member = make_member("s1")
    store(shared("Practitioner", "pr-1"))
    store(shared("Organization", "org-1"))
    store(shared("Organization", "org-lonely"))
    store(encounter("s-enc-1", "s1", FIRST_VISIT, practitioner="pr-1", code="111"), member)
    store(encounter("s-enc-2", "s1", LATER_VISITS, code="222"), member)
    store(encounter("s-enc-old", "s1", years_ago(11)), member)
    store(encounter("s-enc-psy", "s1", LATER_VISITS, security=("PSY",)), member)
    for n in range(12):
        store(observation(f"s-obs-{n}", "s1", LABS_FROM + timedelta(days=n),
                          category="laboratory" if n % 2 else "vital-signs"), member)
    store(claim_eob("s-eob", "s1", day(CLAIM_DAY), organization="org-1"), member)
    store(prior_auth("s-pa", "s1", "approved", changed=days_ago(60), period_end=days_from_now(365)), member)
    store(provenance("s-prov", "s1", ["Encounter/s-enc-1"]), member)
    store(provenance("s-prov-old", "s1", ["Encounter/s-enc-old"]), member)
    consent = consent_for(member, partner)
    other = make_member("s2")
    store(encounter("s2-enc", "s2", FIRST_VISIT), other)
    return member, consent


def ids(bundle: dict, mode: str = "match") -> set[str]:
    return {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == mode}


def search(api, query: str, **headers) -> dict:
    response = api.get(f"/fhir/{query}", **headers)
    assert response.status_code == 200, response.content
    return response.json()


def test_search_by_patient_applies_the_export_rules(api, world):
    bundle = search(api, "Encounter?patient=s1")
    assert ids(bundle) == {"s-enc-1", "s-enc-2", "s-enc-psy"}   # not the one outside the window
    assert bundle["total"] == 3
    assert search(api, "Encounter?patient=Patient/s1")["total"] == 3


def test_search_parameters(api, world):
    assert ids(search(api, f"Encounter?patient=s1&date=ge{day(SPLIT)}")) == {"s-enc-2", "s-enc-psy"}
    assert ids(search(api, "Encounter?patient=s1&type=111")) == {"s-enc-1"}
    assert ids(search(api, "Encounter?patient=s1&_id=s-enc-2")) == {"s-enc-2"}
    assert search(api, "Observation?patient=s1&category=laboratory")["total"] == 6
    assert ids(search(api, f"Observation?patient=s1&date={day(LABS_FROM + timedelta(days=1))}")) == {"s-obs-1"}
    assert ids(search(api, "ExplanationOfBenefit?patient=s1&use=preauthorization")) == {"s-pa"}
    assert ids(search(api, f"ExplanationOfBenefit?patient=s1&service-date={day(CLAIM_DAY)}")) == {"s-eob"}
    assert search(api, f"Encounter?patient=s1&_lastUpdated=gt{day(days_from_now(1))}")["total"] == 0
    assert ids(search(api, f"Encounter?patient=s1&status=finished&date=ge{day(SPLIT)}"
                           f"&date=le{day(days_ago(100))}")) == {"s-enc-2", "s-enc-psy"}


def test_claims_are_non_financial_in_search_and_read(api, world):
    [eob] = [e["resource"] for e in search(api, "ExplanationOfBenefit?patient=s1&use=claim")["entry"]]
    assert "payment" not in eob and "total" not in eob
    read = api.get("/fhir/ExplanationOfBenefit/s-eob").json()
    assert read == eob


def test_count_paging_with_stable_next_links(api, world):
    seen, next_url, pages = [], "/fhir/Observation?patient=s1&_count=5", 0
    while next_url:
        bundle = search(api, next_url.removeprefix("/fhir/"))
        pages += 1
        assert bundle["total"] == 12
        seen += [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        next_url = f"{urlsplit(link).path}?{urlsplit(link).query}" if link else None
    assert pages == 3 and sorted(seen) == sorted(f"s-obs-{n}" for n in range(12))


def test_revinclude_provenance_and_include_practitioner(api, world):
    bundle = search(api, "Encounter?patient=s1&_revinclude=Provenance:target&_include=Encounter:practitioner")
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert {"s-prov", "pr-1"} <= {r["id"] for r in included}
    assert "s-prov-old" not in {r["id"] for r in included}
    transmitter = [r for r in included if r["resourceType"] == "Provenance" and r["id"] != "s-prov"]
    assert transmitter and transmitter[0]["agent"][0]["type"]["coding"][0]["code"] == "transmitter"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate_json(json.dumps(resource))


def test_include_follows_the_parameter_path(api, world):
    bundle = search(api, "ExplanationOfBenefit?patient=s1&_include=ExplanationOfBenefit:provider")
    assert ids(bundle, "include") == {"org-1"}
    assert ids(search(api, "ExplanationOfBenefit?patient=s1&_include=ExplanationOfBenefit:insurer"),
               "include") == set()
    assert ids(search(api, "Encounter?patient=s1&_include=Encounter:practitioner:Practitioner"), "include") == {
        "pr-1"}
    assert api.get("/fhir/Encounter?patient=s1&_include=Encounter:practitioner:Organization").status_code == 400


def test_unsupported_include_and_revinclude_are_refused(api, world):
    assert api.get("/fhir/Encounter?patient=s1&_revinclude=Observation:encounter").status_code == 400
    assert api.get("/fhir/Encounter?patient=s1&_include=Encounter:subject").status_code == 400
    assert api.get("/fhir/Encounter?patient=s1&_include=Encounter:insurer").status_code == 400


def test_unknown_parameters_are_refused_unless_lenient(api, world):
    response = api.get("/fhir/Encounter?patient=s1&color=blue")
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    bundle = search(api, "Encounter?patient=s1&color=blue", HTTP_PREFER="handling=lenient")
    assert bundle["total"] == 3
    assert any(e["search"]["mode"] == "outcome" for e in bundle["entry"])


def test_patient_is_required(api, world):
    assert api.get("/fhir/Encounter?date=ge2020").status_code == 400
    assert api.get("/fhir/Encounter?patient=s1,s2").status_code == 400


def test_patient_search_and_read(api, world):
    assert ids(search(api, "Patient?_id=s1")) == {"s1"}
    assert api.get("/fhir/Patient/s1").json()["id"] == "s1"


def test_read_follows_the_rules(api, world):
    assert api.get("/fhir/Encounter/s-enc-1").status_code == 200
    assert api.get("/fhir/Encounter/s-enc-old").status_code == 404     # outside the window
    assert api.get("/fhir/Encounter/s2-enc").status_code == 404        # another member, no consent
    assert api.get("/fhir/Encounter/nothing").status_code == 404
    assert api.get("/fhir/Practitioner/pr-1").status_code == 200       # referenced by readable data
    assert api.get("/fhir/Organization/org-lonely").status_code == 404  # referenced by nothing readable


def test_regular_consent_withholds_sensitive(api, world, partner):
    member, _ = world
    consent_for(member, partner, policy="regular")
    assert "s-enc-psy" not in ids(search(api, "Encounter?patient=s1"))
    assert api.get("/fhir/Encounter/s-enc-psy").status_code == 404


def test_revoked_consent_and_other_partner_get_not_found(api, world, make_partner, api_for):
    _, consent = world
    other = api_for(make_partner("Other Plan"))
    assert other.get("/fhir/Encounter?patient=s1").status_code == 404
    assert other.get("/fhir/Encounter/s-enc-1").status_code == 404
    assert other.get("/fhir/Practitioner/pr-1").status_code == 404
    revoke(consent, "member asked")
    assert api.get("/fhir/Encounter?patient=s1").status_code == 404
    assert api.get("/fhir/Encounter/s-enc-1").status_code == 404
    assert api.get("/fhir/Patient/s1/$everything").status_code == 404


def test_scope_must_cover_the_type(world, partner, api_for):
    client = api_for(partner, "system/Observation.rs")
    assert client.get("/fhir/Encounter?patient=s1").status_code == 403
    assert client.get("/fhir/Observation?patient=s1").status_code == 200


def test_every_type_is_searchable_on_real_data(api, world, partner):
    member = load_sample_member()
    consent_for(member, partner)
    context = rules.export_context(request_time=REQUEST_TIME)
    assert set(SEARCHABLE_TYPES) == set(context.member_types)
    for resource_type in SEARCHABLE_TYPES:
        query = f"Patient?_id={member.fhir_id}" if resource_type == "Patient" else \
            f"{resource_type}?patient={member.fhir_id}&_count=1000"
        bundle = search(api, query)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            get_fhir_model_class(resource["resourceType"]).model_validate_json(json.dumps(resource))


def test_capability_statement_lists_search(api, world):
    statement = api.get("/fhir/metadata").json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    encounter_entry = by_type["Encounter"]
    assert {"code": "read"} in encounter_entry["interaction"] and {"code": "search-type"} in encounter_entry[
        "interaction"]
    assert {"name": "date", "type": "date"} in encounter_entry["searchParam"]
    assert {"name": "use", "type": "token"} in by_type["ExplanationOfBenefit"]["searchParam"]
    assert {"code": "read"} in by_type["Practitioner"]["interaction"]
    assert "Encounter:practitioner" in encounter_entry["searchInclude"]
    assert encounter_entry["searchRevInclude"] == ["Provenance:target"]
