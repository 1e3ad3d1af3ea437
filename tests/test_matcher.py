"""The pure matcher: identifiers find, demographics confirm, ties and doubts are not matches."""

from __future__ import annotations

from datetime import date

import pytest

from matching import normalize
from matching.matcher import Candidate, Outcome, match, submitted_from
from matching.parameters import MatchRequest, parse_member_match
from pdex.fhir import BadRequest, Unprocessable
from pdex.identity import OurIdentity
from tests.builders import example as load

OURS = OurIdentity(npi="9876543210", organization_id="payer-old-plan", member_id_system="http://example.org/old-payer")
MB_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
UMB_TYPE = {"coding": [{"system": "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "code": "UMB"}]}


def candidate(id_: int = 1, *, family="person", given="patricia ann", birth=date(1974, 12, 25), gender="female",
              postal="02134", member_number="DH10001235", subscriber_id="", umb=None) -> Candidate:
    return Candidate(id=id_, fhir_id=f"pat-{id_}", umb=umb or f"UMB-{id_}", member_number=member_number,
                     subscriber_id=subscriber_id, family=family, given=given, birth_date=birth, gender=gender,
                     postal_code=postal)


def request(*, family="Person", given=("Patricia", "Ann"), birth="1974-12-25", gender="female", postal=None,
            member_id="DH10001235", system="http://example.org/old-payer", subscriber_id=None,
            payor_npi="9876543210", patient_identifiers=()) -> MatchRequest:
    patient = {"resourceType": "Patient", "id": "1", "name": [{"family": family, "given": list(given)}],
               "birthDate": birth, "gender": gender, "identifier": list(patient_identifiers)}
    if postal:
        patient["address"] = [{"postalCode": postal}]
    coverage = {"resourceType": "Coverage", "id": "c1", "status": "active", "beneficiary": {"reference": "Patient/1"},
                "payor": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": payor_npi}}],
                "identifier": [{"type": MB_TYPE, "system": system, "value": member_id}] if member_id else []}
    if subscriber_id:
        coverage["subscriberId"] = subscriber_id
    return MatchRequest(patient=patient, coverage_to_match=coverage)


def run(req: MatchRequest, candidates):
    return match(submitted_from(req, OURS), candidates)


def test_exact_match_by_member_id():
    result = run(request(), [candidate()])
    assert result.outcome is Outcome.MATCH and result.member_id == 1 and "member-id" in result.reasons


def test_typo_in_given_name_with_right_member_id_matches():
    assert run(request(given=("Patrica",)), [candidate()]).outcome is Outcome.MATCH


def test_nickname_and_accents_with_right_member_id_match():
    assert run(request(given=("Pat",), family="Pérson"), [candidate()]).outcome is Outcome.MATCH


def test_swapped_given_and_family_with_right_member_id_match():
    assert run(request(family="Patricia", given=("Person",)), [candidate()]).outcome is Outcome.MATCH


def test_right_name_wrong_birth_date_is_no_match():
    result = run(request(birth="1974-12-26"), [candidate()])
    assert result.outcome is Outcome.NONE and "demographics-disagree" in result.reasons


def test_member_id_with_someone_elses_name_is_no_match():
    assert run(request(family="Smith", given=("William",)), [candidate()]).outcome is Outcome.NONE


def test_gender_conflict_is_no_match():
    assert run(request(gender="male"), [candidate()]).outcome is Outcome.NONE


def test_payor_must_be_us():
    assert run(request(payor_npi="1111111111"), [candidate()]).reasons == ("payor-not-us",)


@pytest.mark.parametrize("system", ["http://example.org/new-payer/identifiers/member", "urn:oid:2.16.840.1.9", None])
def test_an_mb_member_id_on_our_coverage_counts_whatever_its_system(system):
    """The new plan copies the number off our card; it cannot know our system URI."""
    submitted = submitted_from(request(system=system, given=("Patrica",)), OURS)
    assert submitted.member_numbers == {"DH10001235"}
    result = match(submitted, [candidate()])
    assert result.outcome is Outcome.MATCH and "member-id" in result.reasons


def test_an_mb_member_id_of_any_system_still_needs_the_payor_to_be_us():
    submitted = submitted_from(request(system="http://example.org/new-payer", payor_npi="1111111111"), OURS)
    assert match(submitted, [candidate()]).reasons == ("payor-not-us",)


def test_an_untyped_identifier_counts_only_with_our_system_or_none():
    def untyped(system):
        req = request()
        req.coverage_to_match["identifier"] = [{"system": system, "value": "DH10001235"}] if system else [
            {"value": "DH10001235"}]
        return submitted_from(req, OURS).member_numbers

    assert untyped("http://example.org/old-payer") == untyped(None) == {"DH10001235"}
    assert not untyped("http://example.org/new-payer/identifiers/member")


def test_another_identifier_type_is_not_a_member_id():
    req = request()
    req.coverage_to_match["identifier"][0]["type"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PN"}]}
    assert not submitted_from(req, OURS).member_numbers


def test_a_member_number_two_members_share_is_decided_by_demographics():
    family = [candidate(1), candidate(2, given="john", birth=date(1970, 1, 1), gender="male")]
    result = run(request(), family)
    assert result.outcome is Outcome.MATCH and result.member_id == 1
    twins = [candidate(1), candidate(2, given="patricia a")]
    assert run(request(), twins).outcome is Outcome.SEVERAL


def test_requester_member_number_on_patient_is_ignored_but_umb_is_used():
    foreign = {"type": MB_TYPE, "system": "http://example.org/new-payer", "value": "55678"}
    umb = {"type": UMB_TYPE, "system": "https://old/umb", "value": "UMB-7"}
    submitted = submitted_from(request(member_id=None, subscriber_id="S1", patient_identifiers=[foreign, umb]),
                               OURS)
    assert submitted.member_numbers == frozenset() and submitted.umbs == {"UMB-7"}
    result = match(submitted, [candidate(7, umb="UMB-7", member_number=None)])
    assert result.outcome is Outcome.MATCH and result.member_id == 7


def test_subscriber_id_picks_the_dependent_by_demographics():
    family = [candidate(1, given="john", birth=date(1970, 1, 1), gender="male", member_number=None,
                        subscriber_id="SUB1"),
              candidate(2, member_number=None, subscriber_id="SUB1")]
    result = run(request(member_id=None, subscriber_id="SUB1"), family)
    assert result.outcome is Outcome.MATCH and result.member_id == 2


def test_twins_on_one_subscriber_id_are_several():
    twins = [candidate(1, member_number=None, subscriber_id="SUB1", given="patricia"),
             candidate(2, member_number=None, subscriber_id="SUB1", given="patricia a")]
    assert run(request(member_id=None, subscriber_id="SUB1"), twins).outcome is Outcome.SEVERAL


def test_two_members_sharing_demographics_without_identifier_are_several():
    same = [candidate(1, member_number="X1"), candidate(2, member_number="X2")]
    result = run(request(member_id="UNKNOWN", postal="02134"), same)
    assert result.outcome is Outcome.SEVERAL


def test_demographics_only_unique_and_strong_matches():
    result = run(request(member_id="UNKNOWN", postal="02134-1234"), [candidate(member_number="X1")])
    assert result.outcome is Outcome.MATCH and "demographics-only" in result.reasons


@pytest.mark.parametrize("change", [{"postal": None}, {"given": ("Patrica",)}, {"gender": "unknown"}])
def test_demographics_only_needs_postal_exact_names_and_gender(change):
    kwargs = {"member_id": "UNKNOWN", "postal": "02134", **change}
    assert run(request(**kwargs), [candidate(member_number="X1")]).outcome is Outcome.NONE


def test_no_candidate_is_none():
    assert run(request(), []).outcome is Outcome.NONE


def test_reasons_carry_no_demographics():
    result = run(request(), [candidate()])
    text = " ".join(result.reasons)
    assert "person" not in text.lower() and "1974" not in text


def test_normalize():
    assert normalize.name("  O'Brien-Smith123 ") == "obrien smith"
    assert normalize.postal_code("02134-1234") == "02134"
    assert normalize.gender("Female") == "female" and normalize.gender("unknown") == ""


# --- the three input generations -------------------------------------------------------------------

@pytest.mark.parametrize("example", ["member-match-request.json", "member-match-request.hrex-1.0.0.json",
                                     "member-match-request.legacy-oldcoverage-newcoverage.json"])
def test_every_generation_parses_and_matches(example):
    parsed = parse_member_match(load(example))
    assert parsed.coverage_to_link is not None
    assert parsed.legacy is example.startswith("member-match-request.legacy")
    result = run(parsed, [candidate()])
    assert result.outcome is Outcome.MATCH


def test_unknown_parameter_is_unprocessable():
    body = load("member-match-request.json")
    body["parameter"].append({"name": "Extra", "valueString": "x"})
    with pytest.raises(Unprocessable, match="Extra"):
        parse_member_match(body)


def test_missing_coverage_to_match_names_the_problem():
    body = load("member-match-request.json")
    body["parameter"] = [p for p in body["parameter"] if p["name"] != "CoverageToMatch"]
    with pytest.raises(Unprocessable, match="CoverageToMatch is missing"):
        parse_member_match(body)


def test_patient_without_birth_date_is_not_conformant():
    body = load("member-match-request.json")
    del body["parameter"][0]["resource"]["birthDate"]
    with pytest.raises(Unprocessable, match="birthDate"):
        parse_member_match(body)


def test_not_parameters_is_bad_request():
    with pytest.raises(BadRequest):
        parse_member_match({"resourceType": "Patient"})
