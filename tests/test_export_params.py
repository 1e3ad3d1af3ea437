"""Kick-off parameters: GET query and POST Parameters body, strict by default, lenient on request."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from exports.params import EXPORT, P2P_EXPORT_TYPE, JobParams, parse_export_params, parse_prefer
from pdex.fhir import BadRequest
from tests.builders import example


def get(query: dict[str, list[str]], prefer: str = "respond-async", **kwargs):
    return parse_export_params(method="GET", query=query, prefer=prefer, **kwargs)


def post(parameters: list[dict], prefer: str = "respond-async", **kwargs):
    return parse_export_params(method="POST", query={}, body={"resourceType": "Parameters", "parameter": parameters},
                               prefer=prefer, **kwargs)


def test_prefer_tokens():
    assert parse_prefer("respond-async, handling=lenient") == {"respond-async", "handling=lenient"}
    assert parse_prefer(None) == set()


@pytest.mark.parametrize("output_format", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_the_three_ndjson_spellings(output_format):
    assert get({"_outputFormat": [output_format]}).output_format == output_format


def test_other_output_formats_are_refused():
    with pytest.raises(BadRequest):
        get({"_outputFormat": ["text/csv"]})


def test_since_and_until_are_instants():
    params = get({"_since": ["2024-01-01T00:00:00Z"], "_until": ["2024-04-01T00:00:00+02:00"]})
    assert params.since == datetime(2024, 1, 1, tzinfo=UTC)
    assert params.until.utcoffset().total_seconds() == 7200
    for bad in ("2024-01-01", "yesterday", "2024-01-01T00:00:00"):
        with pytest.raises(BadRequest):
            get({"_since": [bad]})


@pytest.mark.parametrize("prefer", ["respond-async", "respond-async, handling=lenient"])
def test_since_in_the_future_is_refused_even_leniently(prefer):
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(BadRequest, match="in the future"):
        get({"_since": ["2057-01-01T00:00:00+05:00"]}, prefer=prefer, now=now)
    with pytest.raises(BadRequest, match="in the future"):
        post([{"name": "_since", "valueInstant": "2026-12-01T12:05:00Z"}], prefer=prefer, now=now)


def test_since_a_little_ahead_of_our_clock_is_now():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert get({"_since": ["2026-12-01T12:00:30Z"]}, now=now).since == datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


def test_until_before_since_is_refused():
    with pytest.raises(BadRequest):
        get({"_since": ["2024-01-01T00:00:00Z"], "_until": ["2023-01-01T00:00:00Z"]})


def test_type_comma_lists_and_repeats_are_one_list():
    params = get({"_type": ["Patient,Encounter", "Observation", "Encounter"]})
    assert params.types == ("Patient", "Encounter", "Observation")


def test_unknown_type_is_refused_or_warned():
    with pytest.raises(BadRequest):
        get({"_type": ["Patient,Basic"]})
    params = get({"_type": ["Patient,Basic"]}, prefer="respond-async, handling=lenient")
    assert params.types == ("Patient",)
    assert any("Basic" in m["diagnostics"] for m in params.messages)


def test_type_filter_is_validated_and_kept_raw():
    params = get({"_typeFilter": ["Encounter?date=ge2024-01-01,Observation?category=laboratory"]})
    assert params.type_filters == ("Encounter?date=ge2024-01-01", "Observation?category=laboratory")
    with pytest.raises(BadRequest):
        get({"_typeFilter": ["Observation?value-quantity=5"]})
    lenient = get({"_typeFilter": ["Observation?value-quantity=5"]}, prefer="handling=lenient")
    assert lenient.type_filters == () and lenient.messages[0]["severity"] == "warning"


def test_patient_is_post_only():
    with pytest.raises(BadRequest):
        get({"patient": ["Patient/1"]})
    params = post([{"name": "patient", "valueReference": {"reference": "Patient/abc"}},
                   {"name": "patient", "valueReference": {"reference": "Patient/def"}}])
    assert params.patients == ("Patient/abc", "Patient/def")


@pytest.mark.parametrize("value_type", ["valueString", "valueCode", "valueUri", "valueCanonical"])
def test_export_type_accepted_as_any_value_type(value_type):
    assert post([{"name": "exportType", value_type: P2P_EXPORT_TYPE}]).export_type == P2P_EXPORT_TYPE


def test_absent_export_type_means_payer_to_payer_with_information():
    params = get({})
    assert params.export_type == P2P_EXPORT_TYPE
    assert [m["severity"] for m in params.messages] == ["information"]
    assert get({}, operation=EXPORT).messages == []


def test_unknown_export_type_is_refused_even_leniently():
    with pytest.raises(BadRequest):
        get({"exportType": ["hl7.fhir.us.davinci-pdex#provider-download"]}, prefer="handling=lenient")


def test_include_associated_data():
    assert get({"includeAssociatedData": ["LatestProvenanceResources"]}).include_associated_data == (
        "LatestProvenanceResources",)
    with pytest.raises(BadRequest):
        get({"includeAssociatedData": ["_custom"]})


def test_unknown_and_unsupported_parameters():
    with pytest.raises(BadRequest):
        get({"color": ["blue"]})
    params = get({"color": ["blue"], "_elements": ["id"]}, prefer="handling=lenient")
    assert len(params.messages) == 2  # one ignored parameter, one absent exportType


def test_elements_are_root_element_names_in_comma_lists_and_repeats():
    assert get({"_elements": ["id,Patient.meta", "Observation.status", "id"]}).elements == (
        "id", "Patient.meta", "Observation.status")
    assert post([{"name": "_elements", "valueString": "id"},
                 {"name": "_elements", "valueString": "Patient.meta"}]).elements == ("id", "Patient.meta")
    job = get({"_elements": ["id,Patient.meta"]}).job_params(request_time=datetime(2026, 1, 1, tzinfo=UTC))
    assert JobParams.from_json(job.to_json(), request_time=job.window.request_time).elements == ("id", "Patient.meta")


@pytest.mark.parametrize("bad", ["Patient.name.family", "name[0]", "Basic.id", "1d", "Patient."])
def test_elements_that_are_no_root_element_or_no_type_of_ours_are_refused(bad):
    with pytest.raises(BadRequest):
        get({"_elements": [bad]})
    assert get({"_elements": [bad, "id"]}, prefer="handling=lenient").elements == ("id",)


def test_body_must_be_parameters():
    with pytest.raises(BadRequest):
        parse_export_params(method="POST", query={}, body={"resourceType": "Patient"})


def test_body_value_types_are_checked():
    with pytest.raises(BadRequest):
        post([{"name": "_since", "valueString": "2024-01-01T00:00:00Z"}])


def test_spec_examples_parse():
    for name in ("davinci-data-export-kickoff.parameters.json",
                 "davinci-data-export-kickoff-incremental.parameters.json"):
        body = example(name)
        params = parse_export_params(method="POST", query={}, body=body, prefer="respond-async")
        assert params.export_type == P2P_EXPORT_TYPE
        assert params.respond_async


def test_job_params_are_json_and_keep_the_window_of_the_kick_off():
    params = get({"_since": ["2024-01-01T00:00:00Z"], "_type": ["Encounter"],
                  "_typeFilter": ["Encounter?date=ge2024-02-01"]})
    kick_off = datetime(2026, 6, 1, 12, tzinfo=UTC)
    job_params = params.job_params(request_time=kick_off)
    stored = json.loads(json.dumps(job_params.to_json()))
    again = JobParams.from_json(stored, request_time=datetime(2030, 1, 1, tzinfo=UTC))
    assert again == job_params  # the window is the kick-off's, whatever the time it is read back
    assert again.window.request_time == kick_off and again.window.updated_after == params.since
    assert again.types == ("Encounter",) and again.type_filters == ("Encounter?date=ge2024-02-01",)
    context = again.context(regular_member_ids=[7])
    assert context.window is again.window and context.regular_member_ids == {7}
    assert list(context.type_filters) == ["Encounter"]


def test_a_rerun_moves_the_window_with_it():
    params = get({"_since": ["2015-01-01T00:00:00Z"]}).job_params(request_time=datetime(2026, 6, 1, tzinfo=UTC))
    assert params.window.since_was_raised  # cap mode: raised to the look-back
    later = params.again_at(datetime(2027, 6, 1, tzinfo=UTC))
    assert later.window.request_time.year == 2027 and later.window.updated_after.year == 2022
    assert later.window.requested_since == params.window.requested_since
