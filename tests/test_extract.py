"""The extraction rules (docs/data-store.md) pinned on real Synthea resources and the IG's EOB examples.

The real resources are tests/fixtures/synthea-pinned.ndjson: one of every type of the Synthea set, copied
byte for byte (scripts/make_test_fixtures.py).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path

import pytest

from pdex import extract as ex
from tests.builders import FIXTURES, SAMPLE, example

CODES_FILE = str(Path(ex.__file__).with_name("sensitive_codes.json"))
SECURITY = frozenset({"R", "V", "PSY", "SUD", "HIV", "ETH", "SEX", "STD"})
EDT, EST = timezone(timedelta(hours=-4)), timezone(timedelta(hours=-5))
ABRAM = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"


@cache
def _pinned() -> dict[tuple[str, str], dict]:
    with open(FIXTURES / "synthea-pinned.ndjson", encoding="utf-8") as stream:
        return {(r["resourceType"], r["id"]): r for r in map(json.loads, stream)}


def real(resource_type: str, fhir_id: str) -> dict:
    return copy.deepcopy(_pinned()[(resource_type, fhir_id)])


def columns(resource: dict) -> ex.Extracted:
    return ex.extract(resource, security_codes=SECURITY, codes_file=CODES_FILE)


# --- date of service, member and last_updated on a real resource of every type --------------------

REAL_CASES = [
    # type, id, member, service_start, service_end, last_updated (record date; no meta in Synthea)
    ("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086", ABRAM,
     datetime(1990, 12, 13, 17, 30, 49, tzinfo=EDT), datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT),
     datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT)),
    ("Claim", "001ae14e-3afb-4b8f-b23e-3ad65fec5e4e", ABRAM,
     datetime(1990, 12, 13, 17, 30, 49, tzinfo=EDT), datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT),
     datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT)),
    # Synthea's claim EOB billablePeriod runs a year past the visit: the rule takes billablePeriod as it is.
    ("ExplanationOfBenefit", "af093440-e2a5-4a1e-93a5-70b212699b02", ABRAM,
     datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT), datetime(1991, 12, 13, 17, 45, 49, tzinfo=EDT),
     datetime(1990, 12, 13, 17, 45, 49, tzinfo=EDT)),
    ("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9", ABRAM,
     datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST), datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST),
     datetime(2016, 7, 29, 16, 30, 49, 825000, tzinfo=EST)),
    ("DiagnosticReport", "943d816d-bad4-4125-835a-f5fafcad22df", ABRAM,
     datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST), datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST),
     datetime(2016, 7, 29, 16, 30, 49, 825000, tzinfo=EST)),
    ("Procedure", "da8efb7f-9080-4d7b-bd00-8aeee447def1", ABRAM,
     datetime(2018, 8, 3, 16, 30, 49, tzinfo=EST), datetime(2018, 8, 3, 16, 45, 49, tzinfo=EST),
     datetime(2018, 8, 3, 16, 45, 49, tzinfo=EST)),
    ("Immunization", "c3f2624a-413e-4707-b58f-7946fe396bdf", ABRAM,
     datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST), datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST),
     datetime(2016, 7, 29, 16, 30, 49, tzinfo=EST)),
    ("Condition", "a5a38601-b6fe-46b4-a67e-cde9d5957dde", ABRAM,
     datetime(1990, 12, 13, 17, 30, 49, tzinfo=EDT), datetime(1990, 12, 13, 17, 30, 49, tzinfo=EDT),
     datetime(1990, 12, 13, 17, 30, 49, tzinfo=EDT)),
    ("AllergyIntolerance", "35b9a8ec-7d37-4ffe-b406-980a804da0b5", "58c297c4-d684-4677-8024-01131d93835e",
     datetime(1978, 2, 4, 17, 48, 38, tzinfo=EDT), datetime(1978, 2, 4, 17, 48, 38, tzinfo=EDT),
     datetime(1978, 2, 4, 17, 48, 38, tzinfo=EDT)),
    ("MedicationRequest", "1e90905f-ebba-4953-b0b9-53d439bb9d76", ABRAM,
     datetime(2023, 5, 22, 16, 30, 49, tzinfo=EST), datetime(2023, 5, 22, 16, 30, 49, tzinfo=EST),
     datetime(2023, 5, 22, 16, 30, 49, tzinfo=EST)),
    ("ImagingStudy", "fd93b6e0-0240-4a5a-ab4e-1395c223a2bb", "538a9a4e-8437-47d3-8c01-1a17dca8f0be",
     datetime(2016, 6, 15, 17, 45, 58, tzinfo=EST), datetime(2016, 6, 15, 17, 45, 58, tzinfo=EST),
     datetime(2016, 6, 15, 17, 45, 58, tzinfo=EST)),
    # An open period: the plan is still running.
    ("CarePlan", "ac8ce97f-0445-4a75-935b-15bca1d22472", ABRAM,
     datetime(2018, 8, 3, 16, 30, 49, tzinfo=EST), None, datetime(2018, 8, 3, 16, 30, 49, tzinfo=EST)),
    ("CareTeam", "e0134665-1b30-4ba3-92a5-ca5b91cce68d", ABRAM,
     datetime(2018, 8, 3, 16, 30, 49, tzinfo=EST), None, datetime(2018, 8, 3, 16, 30, 49, tzinfo=EST)),
    # No date of service: a device is not a service event, a Patient is the member itself.
    ("Device", "758ebcae-33c1-4e44-8cb9-383520dbcb90", "538a9a4e-8437-47d3-8c01-1a17dca8f0be",
     None, None, ex.UNDATED_LAST_UPDATED),
    ("Patient", ABRAM, ABRAM, None, None, ex.UNDATED_LAST_UPDATED),
    # Shared resources: no member at all.
    ("Organization", "5d4b9df1-93ae-3bc9-b680-03249990e558", None, None, None, ex.UNDATED_LAST_UPDATED),
    ("Practitioner", "87a5ab63-4cbe-3f5c-9287-5388c7187ef1", None, None, None, ex.UNDATED_LAST_UPDATED),
]


@pytest.mark.parametrize(("resource_type", "fhir_id", "member", "start", "end", "updated"), REAL_CASES,
                         ids=[case[0] for case in REAL_CASES])
def test_date_of_service_member_and_last_updated_on_real_resources(resource_type, fhir_id, member, start, end,
                                                                    updated):
    extracted = columns(real(resource_type, fhir_id))
    assert (extracted.resource_type, extracted.fhir_id) == (resource_type, fhir_id)
    assert extracted.patient_id == member
    assert (extracted.service_start, extracted.service_end) == (start, end)
    assert extracted.last_updated == updated
    assert extracted.last_updated_from_meta is False


def test_every_type_in_the_data_is_covered_by_a_pinned_case():
    """The sample holds every type of the Synthea set (tests/test_ingest.py); each has a pinned case."""
    types_in_data = {path.name.split(".")[0] for path in SAMPLE.glob("*.ndjson.gz")}
    assert types_in_data == {case[0] for case in REAL_CASES}
    assert {kind for kind, _ in _pinned()} == types_in_data


def test_meta_last_updated_wins_over_the_record_date():
    encounter = real("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086")
    encounter["meta"] = {"lastUpdated": "2026-01-02T03:04:05.678Z"}
    extracted = columns(encounter)
    assert extracted.last_updated == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert extracted.last_updated_from_meta is True


# --- sensitivity ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("resource_type", "fhir_id", "why"), [
    ("Condition", "bdbb6075-f170-4d6d-b040-5f1ffc4d87ef", "SNOMED 55680006 drug overdose"),
    ("Observation", "3b5f0530-bdef-439f-bfdb-6f606bc83ad3", "LOINC 55277-8 HIV status"),
    ("Procedure", "4e123f35-aea3-41bc-9749-45d955e2563d", "SNOMED 714812005 induced termination of pregnancy"),
])
def test_clinical_codes_on_the_list_make_real_resources_sensitive(resource_type, fhir_id, why):
    assert columns(real(resource_type, fhir_id)).sensitive, why


@pytest.mark.parametrize(("resource_type", "fhir_id"), [
    ("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086"),   # sinusitis
    ("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9"),  # body height
    ("Condition", "a5a38601-b6fe-46b4-a67e-cde9d5957dde"),   # chronic sinusitis
])
def test_ordinary_real_resources_are_not_sensitive(resource_type, fhir_id):
    assert not columns(real(resource_type, fhir_id)).sensitive


@pytest.mark.parametrize("label", [
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
])
def test_a_security_label_makes_a_resource_sensitive(label):
    observation = real("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9")
    observation["meta"] = {"security": [label]}
    assert columns(observation).sensitive


def test_normal_confidentiality_is_not_a_sensitivity_label():
    observation = real("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9")
    observation["meta"] = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                         "code": "N"}]}
    assert not columns(observation).sensitive


def test_icd10_prefixes_on_the_list_match_any_code_below_them():
    condition = real("Condition", "a5a38601-b6fe-46b4-a67e-cde9d5957dde")
    condition["code"]["coding"].append({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"})
    assert columns(condition).sensitive
    condition["code"]["coding"][-1]["code"] = "J32.9"
    assert not columns(condition).sensitive


def test_the_code_list_is_configurable(tmp_path):
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"codes": [{"system": "http://loinc.org", "code": "8302-2"}], "prefixes": []}))
    height = real("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9")
    assert ex.extract(height, security_codes=SECURITY, codes_file=str(codes)).sensitive
    overdose = real("Condition", "bdbb6075-f170-4d6d-b040-5f1ffc4d87ef")
    assert not ex.extract(overdose, security_codes=SECURITY, codes_file=str(codes)).sensitive


# --- clinical status, refs ------------------------------------------------------------------------

def test_clinical_status_of_conditions_and_allergies():
    assert columns(real("Condition", "77ac8342-6950-4302-a303-efba12e06785")).clinical_status == "resolved"
    assert columns(real("Condition", "a5a38601-b6fe-46b4-a67e-cde9d5957dde")).clinical_status == "active"
    assert columns(real("AllergyIntolerance", "35b9a8ec-7d37-4ffe-b406-980a804da0b5")).clinical_status == "active"
    assert columns(real("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086")).clinical_status == ""


def test_refs_list_shared_resources_only():
    assert columns(real("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086")).refs == [
        "Organization/5d4b9df1-93ae-3bc9-b680-03249990e558", "Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1",
    ]
    # Claim/Condition/Encounter references are member data, not shared resources.
    assert columns(real("Claim", "001ae14e-3afb-4b8f-b23e-3ad65fec5e4e")).refs == [
        "Organization/5d4b9df1-93ae-3bc9-b680-03249990e558",
    ]
    # The contained ServiceRequest's requester counts too: it is exported with the EOB.
    assert columns(real("ExplanationOfBenefit", "af093440-e2a5-4a1e-93a5-70b212699b02")).refs == [
        "Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1",
    ]


# --- member references ------------------------------------------------------------------------------

@pytest.mark.parametrize(("reference", "member"), [
    ("Patient/abc", "abc"),
    ("urn:uuid:6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2", ABRAM),
    ("https://other.example.org/fhir/Patient/abc", "abc"),
    ("Patient/abc/_history/3", "abc"),
    ("Group/abc", None),
    ("#contained", None),
])
def test_member_reference_forms(reference, member):
    assert ex.member_reference({"resourceType": "Observation", "subject": {"reference": reference}}) == member


def test_coverage_member_is_its_beneficiary():
    coverage = {"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p1"},
                "subscriber": {"reference": "Patient/p0"}, "period": {"start": "2020-01", "end": "2024-12-31"}}
    extracted = columns(coverage)
    assert extracted.patient_id == "p1"
    assert extracted.service_start == datetime(2020, 1, 1, tzinfo=UTC)
    assert extracted.service_end == datetime(2024, 12, 31, tzinfo=UTC)


# --- prior authorizations: the IG examples and the derivation rules --------------------------------

def test_pdex_prior_authorization_example():
    extracted = columns(example("eob-pdex-prior-authorization.json"))
    assert extracted.eob_use == "preauthorization"
    # reviewAction A1 ("certified in total") is the decision; outcome=queued is processing state only.
    assert extracted.pa_status == "approved"
    assert extracted.pa_status_changed == datetime(2024, 7, 23, 17, 26, 23, 217000, tzinfo=UTC)
    assert extracted.pa_period_end == datetime(2021, 10, 31, tzinfo=UTC)
    assert extracted.pa_drug is False
    assert extracted.service_start == datetime(2021, 10, 1, tzinfo=UTC)
    assert extracted.last_updated == datetime(2024, 2, 6, 9, 14, 11, tzinfo=UTC)
    assert extracted.patient_id == "1"
    assert extracted.refs == ["Organization/Payer1", "Organization/Payer2"]


def test_carin_bb_claim_example_is_not_a_prior_authorization():
    extracted = columns(example("eob-carin-bb-inpatient-nonfinancial.json"))
    assert extracted.eob_use == "claim"
    assert (extracted.pa_status, extracted.pa_status_changed, extracted.pa_period_end) == ("", None, None)
    assert extracted.service_start == datetime(2019, 1, 1, tzinfo=UTC)
    assert extracted.service_end == datetime(2019, 10, 31, tzinfo=UTC)
    assert extracted.last_updated == datetime(2019, 12, 12, 9, 14, 11, tzinfo=UTC)
    assert extracted.patient_id == "Patient2"


def _pa_with_actions(*codes: str) -> dict:
    pa = example("eob-pdex-prior-authorization.json")
    template = pa["item"][0]
    pa["item"] = []
    for sequence, code in enumerate(codes, start=1):
        item = copy.deepcopy(template)
        item["sequence"] = sequence
        item["adjudication"][0]["extension"][0]["extension"][1]["valueCodeableConcept"]["coding"][0]["code"] = code
        pa["item"].append(item)
    return pa


@pytest.mark.parametrize(("codes", "status"), [
    (["A1"], "approved"), (["A2"], "partial"), (["A3"], "denied"), (["A4"], "pending"), (["A6"], "partial"),
    (["C"], "cancelled"), (["CT"], "pending"), (["A1", "A3"], "partial"), (["A1", "A4"], "pending"),
    (["A3", "A3"], "denied"), (["A1", "C"], "approved"),
])
def test_pa_status_from_review_actions(codes, status):
    assert ex.pa_status(_pa_with_actions(*codes)) == status


@pytest.mark.parametrize(("outcome", "status"), [
    ("queued", "pending"), ("complete", "approved"), ("partial", "partial"), ("error", "denied"),
])
def test_pa_status_falls_back_to_outcome_without_review_action(outcome, status):
    pa = example("eob-pdex-prior-authorization.json")
    pa["item"][0]["adjudication"][0].pop("extension")
    pa["outcome"] = outcome
    assert ex.pa_status(pa) == status
    # Without base-ext-when-adjudicated the status changed when the PA was created.
    assert ex.pa_status_changed(pa) == datetime(2021, 9, 20, tzinfo=UTC)


def test_a_denial_reason_means_denied_and_a_cancelled_status_wins():
    pa = example("eob-pdex-prior-authorization.json")
    pa["item"][0]["adjudication"] = [{"category": {"coding": [{"code": "denialreason"}]}}]
    pa["outcome"] = "complete"
    assert ex.pa_status(pa) == "denied"
    pa["status"] = "cancelled"
    assert ex.pa_status(pa) == "cancelled"


def test_pharmacy_prior_authorizations_are_drug_pas():
    pa = example("eob-pdex-prior-authorization.json")
    pa["type"]["coding"][0]["code"] = "pharmacy"
    assert columns(pa).pa_drug is True
    pa = example("eob-pdex-prior-authorization.json")
    pa["item"][0]["productOrService"]["coding"] = [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1551300"}]
    assert columns(pa).pa_drug is True


# --- parsers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "moment"), [
    ("2021", datetime(2021, 1, 1, tzinfo=UTC)),
    ("2021-10", datetime(2021, 10, 1, tzinfo=UTC)),
    ("2021-10-31", datetime(2021, 10, 31, tzinfo=UTC)),
    ("2016-07-29T16:30:49.825-05:00", datetime(2016, 7, 29, 16, 30, 49, 825000, tzinfo=EST)),
    ("2024-02-06T09:14:11Z", datetime(2024, 2, 6, 9, 14, 11, tzinfo=UTC)),
    ("not a date", None), ("", None), (None, None),
])
def test_parse_fhir_datetime(text, moment):
    assert ex.parse_fhir_datetime(text) == moment


def test_normalize_name():
    assert ex.normalize_name("  José-María  O'Brien ") == "jose maria o brien"
    assert ex.normalize_name("MÜLLER") == "muller"
