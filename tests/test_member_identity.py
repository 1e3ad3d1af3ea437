"""A member's identity from the payer's own Coverage: filled by every load, kept current, matched by.

`load_ndjson` copies the member id (identifier typed MB, whatever its system) and the subscriber id of the
member's Coverage with us onto the Member; `$member-match` finds the member by either (docs/matching.md,
docs/data-store.md "Member identity").
"""

from __future__ import annotations

import copy
import io
import json

import pytest
from django.core.management import call_command
from django.db import connection

from consent.decision import SENSITIVE_POLICY_URI
from pdex import identity, ingest
from pdex.models import Member
from tests.builders import (
    EXAMPLE_PAYER_NPI,
    coverage,
    current_period,
    days_ago,
    days_from_now,
    example,
    our_payor,
    patient,
    years_ago,
)

URL = "/fhir/Patient/$member-match"
# The payer's own member id system: not our MEMBER_ID_SYSTEM, and not what the new plan will send.
PAYER_SYSTEM = "urn:oid:1.2.840.114350.1.13.99.3.7.5.737384.14"
NEW_PLAN_GUESS = "http://new-plan.example.org/fhir/sid/old-card"
NPI = "http://hl7.org/fhir/sid/us-npi"
TYPO = ("Aan", "Lucia")  # Ana Lucia, as the new plan misspelled her


@pytest.fixture(autouse=True)
def our_plan(settings):
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI  # the payor the spec's example CoverageToMatch names
    settings.MEMBER_ID_SYSTEM = "https://old-plan.example.org/fhir/memberid"
    settings.MEMBER_MATCH_MAX_FAILURES = 50


def ana(**changes) -> dict:
    return patient("p-ana", family="Quintero", given=("Ana", "Lucia"), birth_date="1981-04-17",
                   gender="female", postal_code="60614", **changes)


def ana_coverage(fhir_id: str = "cov-ana", *, member_id: str | None = "A77001234",
                 subscriber_id: str | None = "S5550001", payor: dict | None = None, **changes) -> dict:
    """Ana's card with us, in the payer's own member id system."""
    return coverage(fhir_id, "p-ana", member_id=member_id, member_id_system=PAYER_SYSTEM,
                    subscriber_id=subscriber_id, payor=payor or our_payor(), **changes)


def load_ndjson(tmp_path, *resources: dict, name: str = "data") -> str:
    """Write the resources as one NDJSON file and load it with the management command; its output."""
    path = tmp_path / f"{name}.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    out, err = io.StringIO(), io.StringIO()
    call_command("load_ndjson", str(path), "--workers", "1", stdout=out, stderr=err)
    assert not err.getvalue()
    return out.getvalue()


def ana_now() -> Member:
    return Member.objects.get(fhir_id="p-ana")


def match_request(*, member_id: str | None = None, system: str | None = NEW_PLAN_GUESS,
                  subscriber_id: str | None = None, given: tuple[str, ...] = ("Ana", "Lucia")) -> dict:
    """The spec's example $member-match request for Ana, as the new plan sends it: names as it has them, the
    numbers off her old card, our NPI as payor, a consent in force today."""
    body = copy.deepcopy(example("member-match-request.json"))
    parts = {p["name"]: p for p in body["parameter"]}
    parts["MemberPatient"]["resource"] = {
        "resourceType": "Patient", "id": "1", "name": [{"use": "official", "family": "Quintero", "given": list(given)}],
        "gender": "female", "birthDate": "1981-04-17"}
    coverage_to_match = parts["CoverageToMatch"]["resource"]
    coverage_to_match["identifier"] = []
    if member_id:
        identifier = {"type": {"coding": [{"system": identity.IDENTIFIER_TYPE_SYSTEM, "code": "MB"}]},
                      "value": member_id}
        if system:
            identifier["system"] = system
        coverage_to_match["identifier"].append(identifier)
    if subscriber_id:
        coverage_to_match["subscriberId"] = subscriber_id
    consent = parts["Consent"]["resource"]
    consent["provision"]["period"] = current_period()
    consent["policy"] = [{"uri": SENSITIVE_POLICY_URI}]
    return body


def member_match(api, body: dict) -> str | None:
    """Our Patient reference for a match, None for the one generic 422."""
    response = api.post(URL, data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code in (200, 422), response.content
    if response.status_code == 422:
        return None
    return next(p for p in response.json()["parameter"] if p["name"] == "MemberId")["valueReference"]["reference"]


# --- the acceptance flow: a payer's own data, loaded with load_ndjson, matched by its card numbers ---------

def test_loaded_coverage_fills_the_identity_with_its_system(db, tmp_path):
    output = load_ndjson(tmp_path, ana(), ana_coverage())
    member = ana_now()
    assert (member.member_number, member.member_number_system) == ("A77001234", PAYER_SYSTEM)
    assert (member.subscriber_id, member.identity_coverage) == ("S5550001", "cov-ana")
    assert "from Coverage changed for 1 member(s)" in output


def test_member_id_of_any_system_with_a_typo_in_the_given_name_matches(api, tmp_path):
    load_ndjson(tmp_path, ana(), ana_coverage())
    assert member_match(api, match_request(member_id="A77001234", given=TYPO)) == "Patient/p-ana"
    assert member_match(api, match_request(member_id="A77001234", system=None, given=TYPO)) == "Patient/p-ana"
    # Demographics alone would not do: the typo makes them not strong enough.
    assert member_match(api, match_request(member_id="UNKNOWN-CARD", given=TYPO)) is None


def test_subscriber_id_alone_matches(api, tmp_path):
    load_ndjson(tmp_path, ana(), ana_coverage())
    assert member_match(api, match_request(subscriber_id="S5550001", given=TYPO)) == "Patient/p-ana"
    assert member_match(api, match_request(subscriber_id="S5550002", given=TYPO)) is None


def test_an_identifier_hit_is_still_confirmed_by_demographics(api, tmp_path):
    load_ndjson(tmp_path, ana(), ana_coverage())
    body = match_request(member_id="A77001234")
    body["parameter"][0]["resource"]["birthDate"] = "1981-04-18"
    assert member_match(api, body) is None


def test_a_reload_with_a_new_member_id_keeps_the_identity_current(api, tmp_path):
    load_ndjson(tmp_path, ana(), ana_coverage(), name="first")
    output = load_ndjson(tmp_path, ana_coverage(member_id="A77009999", subscriber_id="S5550077"), name="changed")
    assert "from Coverage changed for 1 member(s)" in output
    member = ana_now()
    assert (member.member_number, member.subscriber_id) == ("A77009999", "S5550077")
    assert member_match(api, match_request(member_id="A77009999", given=TYPO)) == "Patient/p-ana"
    assert member_match(api, match_request(member_id="A77001234", given=TYPO)) is None


def test_loading_twice_changes_no_member(db, tmp_path):
    load_ndjson(tmp_path, ana(), ana_coverage())
    before = ana_now().updated_at
    output = load_ndjson(tmp_path, ana(), ana_coverage())
    assert "from Coverage changed for 0 member(s)" in output
    assert ana_now().updated_at == before


def test_a_coverage_loaded_before_its_patient_gives_the_identity_when_the_patient_comes(db, tmp_path):
    load_ndjson(tmp_path, ana_coverage(), name="coverage")
    load_ndjson(tmp_path, ana(), name="patient")
    assert ana_now().member_number == "A77001234"


# --- which Coverage wins ------------------------------------------------------------------------------------

def identity_after(*coverages: dict) -> tuple[str, str, str]:
    ingest.load_resources([ana(), *coverages])
    member = ana_now()
    return member.identity_coverage, member.member_number, member.subscriber_id


def test_the_active_coverage_in_force_today_wins_over_a_more_recent_ended_one(db):
    in_force = ana_coverage("cov-now", member_id="NOW", start=years_ago(3))
    ended = ana_coverage("cov-ended", member_id="ENDED", start=days_ago(200), end=days_ago(1))
    future = ana_coverage("cov-next", member_id="NEXT", start=days_from_now(30))
    assert identity_after(ended, in_force, future)[:2] == ("cov-now", "NOW")


def test_without_one_in_force_the_most_recent_wins(db):
    older = ana_coverage("cov-a", member_id="OLDER", start=years_ago(6), end=years_ago(3))
    recent = ana_coverage("cov-b", member_id="RECENT", start=years_ago(3), end=days_ago(20))
    assert identity_after(older, recent)[:2] == ("cov-b", "RECENT")
    # A cancelled Coverage covers nobody today, but it is still the member's most recent card with us.
    cancelled = ana_coverage("cov-c", member_id="CANCELLED", start=years_ago(1), status="cancelled")
    assert identity_after(cancelled)[:2] == ("cov-c", "CANCELLED")


def test_coverage_of_another_payer_draft_or_entered_in_error_never_counts(db):
    ours = ana_coverage("cov-ours", member_id="OURS", start=years_ago(5), end=years_ago(1))
    theirs = coverage("cov-theirs", "p-ana", member_id="THEIRS", subscriber_id="T1",
                      payor={"identifier": {"system": NPI, "value": "1111111111"}})
    no_payor_named = coverage("cov-display", "p-ana", member_id="DISPLAY")
    mistaken = ana_coverage("cov-mistake", member_id="MISTAKE", status="entered-in-error")
    draft = ana_coverage("cov-draft", member_id="DRAFT", status="draft")
    assert identity_after(ours, theirs, no_payor_named, mistaken, draft) == ("cov-ours", "OURS", "S5550001")


def test_a_coverage_without_either_number_carries_no_identity(db):
    numbered = ana_coverage("cov-numbered", member_id="NUMBERED", start=years_ago(4), end=years_ago(2))
    bare = ana_coverage("cov-bare", member_id=None, subscriber_id=None)
    assert identity_after(numbered, bare)[:2] == ("cov-numbered", "NUMBERED")
    only_subscriber = ana_coverage("cov-family", member_id=None, subscriber_id="S-FAMILY")
    assert identity_after(only_subscriber) == ("cov-family", "", "S-FAMILY")


def test_a_member_whose_coverage_no_longer_counts_loses_the_identity(db):
    identity_after(ana_coverage())
    assert identity_after(ana_coverage(status="entered-in-error")) == ("", "", "")
    member = ana_now()
    assert member.member_number_system == ""


def test_an_old_identifier_gives_way_to_the_current_one_on_the_same_coverage(db):
    card = ana_coverage()
    card["identifier"].insert(0, {**card["identifier"][0], "value": "A-OLD", "use": "old"})
    assert identity_after(card)[1] == "A77001234"


def test_a_family_sharing_one_card_number_is_told_apart_by_demographics(api, db):
    son = patient("p-son", family="Quintero", given=("Mateo",), birth_date="2009-02-01", gender="male")
    son_card = coverage("cov-son", "p-son", member_id="A77001234", subscriber_id="S5550001", payor=our_payor())
    ingest.load_resources([ana(), ana_coverage(), son, son_card])
    assert Member.objects.filter(member_number="A77001234").count() == 2
    assert member_match(api, match_request(member_id="A77001234", given=TYPO)) == "Patient/p-ana"


# --- one rule for "the payor names us", in Python (requests) and SQL (the store) ----------------------------

PAYORS = [
    ({"reference": "Organization/payer-old-plan"}, True),
    ({"reference": "https://old-plan.example.org/fhir/Organization/payer-old-plan"}, True),
    ({"reference": "Organization/payer-old-plan/"}, True),
    ({"reference": "Organization/not-payer-old-plan"}, False),
    ({"reference": "Organization/payer-old-plan-2"}, False),
    ({"identifier": {"system": NPI, "value": EXAMPLE_PAYER_NPI}}, True),
    ({"identifier": {"system": NPI, "value": "1111111111"}}, False),
    ({"identifier": {"system": "http://example.org/npi", "value": EXAMPLE_PAYER_NPI}}, False),
    ({"reference": "#payer"}, True),
    ({"reference": "#other"}, False),
    ({"display": "Old Plan Health"}, False),
]


@pytest.mark.parametrize(("payor", "ours"), PAYORS, ids=[json.dumps(p) for p, _ in PAYORS])
def test_payor_names_us_the_same_in_python_and_in_sql(db, settings, payor, ours):
    settings.PAYER_ORGANIZATION_ID = "payer-old-plan"
    card = ana_coverage(payor=payor)
    card["contained"] = [{"resourceType": "Organization", "id": "payer",
                          "identifier": [{"system": NPI, "value": EXAMPLE_PAYER_NPI}]},
                         {"resourceType": "Organization", "id": "other",
                          "identifier": [{"system": NPI, "value": "1111111111"}]}]
    assert identity.payor_names_us(card, identity.our_identity()) is ours
    ingest.load_resources([ana(), card], validate=False)
    assert (ana_now().member_number == "A77001234") is ours


def test_refresh_reads_only_the_members_asked_for(db):
    ingest.load_resources([ana(), ana_coverage()])
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pdex_member SET member_number = 'STALE' WHERE fhir_id = 'p-ana'")
    assert identity.refresh_member_identity(["p-somebody-else"]) == 0
    assert ana_now().member_number == "STALE"
    assert identity.refresh_member_identity(["p-ana"]) == 1
    assert ana_now().member_number == "A77001234"
    assert identity.refresh_member_identity() == 0
