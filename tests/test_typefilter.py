"""_typeFilter: the date/code/category/status parameters of the exported types, applied in SQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.db import connection

from exports import rules
from exports.typefilter import date_range, parse_type_filters, split_type_filters
from pdex.fhir import BadRequest
from tests.builders import REQUEST_TIME, claim_eob, condition, encounter, make_member, observation, store


def test_queries_split_on_commas_that_start_a_new_query_only():
    assert split_type_filters(["Observation?code=1,2,Encounter?date=ge2024", "Condition?clinical-status=active"]) == [
        "Observation?code=1,2", "Encounter?date=ge2024", "Condition?clinical-status=active"]


def test_url_encoded_queries_are_accepted():
    filters, _ = parse_type_filters(["MedicationRequest%3Fstatus%3Dactive"])
    assert list(filters) == ["MedicationRequest"]


def test_date_precision():
    assert date_range("2024") == (datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert date_range("2024-02") == (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    assert date_range("2024-02-03")[1] == datetime(2024, 2, 4, tzinfo=UTC)
    assert date_range("2024-02-03T10:00:00+02:00")[0] == datetime(2024, 2, 3, 8, tzinfo=UTC)


@pytest.mark.parametrize("query", [
    "Observation?value-quantity=5",            # not supported
    "Encounter?date=sa2024-01-01",              # prefix we do not support
    "Encounter?date=yesterday",                 # not a date
    "Encounter?date=2024-01-01T10:00",          # time without zone
    "Observation?code:text=glucose",            # modifier
    "Observation?_include=Observation:subject",  # forbidden in _typeFilter
    "Basic?code=x",                             # type not exported
    "Observation",                              # no query
])
def test_unsupported_filters_are_refused(query):
    with pytest.raises(BadRequest):
        parse_type_filters([query])


def test_lenient_handling_turns_refusals_into_warnings():
    filters, warnings = parse_type_filters(["Observation?value-quantity=5", "Encounter?date=ge2024"], lenient=True)
    assert list(filters) == ["Encounter"]
    [warning] = warnings
    assert warning["severity"] == "warning" and "value-quantity" in warning["diagnostics"]


def test_filter_on_a_type_not_requested_is_refused():
    with pytest.raises(BadRequest):
        parse_type_filters(["Encounter?date=ge2024"], types=["Observation"])


@pytest.fixture
def member(db):
    member = make_member("tf1")
    store(encounter("e-2023", "tf1", "2023-03-01T10:00:00Z", code="111"), member)
    store(encounter("e-2025", "tf1", "2025-03-01T10:00:00Z", code="222"), member)
    store(observation("o-lab", "tf1", "2025-01-01T00:00:00Z", category="laboratory", code="2339-0"), member)
    store(observation("o-vital", "tf1", "2025-01-01T00:00:00Z", category="vital-signs", code="8867-4"), member)
    store(condition("c-active", "tf1", "2024-01-01", "active"), member)
    store(condition("c-resolved", "tf1", "2024-01-01", "resolved"), member)
    store(claim_eob("b-2023", "tf1", "2023-05-01T00:00:00Z"), member)
    store(claim_eob("b-2025", "tf1", "2025-05-01T00:00:00Z"), member)
    return member


def exported_ids(member, resource_type: str, *queries: str) -> set[str]:
    filters, _ = parse_type_filters(queries)
    context = rules.export_context(request_time=REQUEST_TIME, mode="cap", type_filters=filters)
    sql, params = rules.chunk_query(resource_type, [member.pk], context)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {json.loads(row[0])["id"] for row in cursor.fetchall()}


def test_date_of_service_filter(member):
    assert exported_ids(member, "Encounter", "Encounter?date=ge2024-01-01") == {"e-2025"}
    assert exported_ids(member, "Encounter", "Encounter?date=lt2024-01-01") == {"e-2023"}
    assert exported_ids(member, "Encounter", "Encounter?date=2023-03") == {"e-2023"}
    assert exported_ids(member, "ExplanationOfBenefit", "ExplanationOfBenefit?service-date=ge2025") == {"b-2025"}


def test_two_queries_on_one_type_are_alternatives(member):
    assert exported_ids(member, "Encounter", "Encounter?date=lt2024", "Encounter?date=ge2025") == {"e-2023", "e-2025"}


def test_parameters_of_one_query_are_all_required(member):
    assert exported_ids(member, "Encounter", "Encounter?date=ge2020&type=222") == {"e-2025"}


def test_token_parameters(member):
    assert exported_ids(member, "Observation", "Observation?category=laboratory") == {"o-lab"}
    observation_system = "http://terminology.hl7.org/CodeSystem/observation-category"
    assert exported_ids(member, "Observation", f"Observation?category={observation_system}|vital-signs") == {"o-vital"}
    both = exported_ids(member, "Observation", "Observation?code=http://loinc.org|2339-0,8867-4")
    assert both == {"o-lab", "o-vital"}
    assert exported_ids(member, "Condition", "Condition?clinical-status=active") == {"c-active"}


def test_status_and_other_types_untouched(member):
    assert exported_ids(member, "Encounter", "Encounter?status=cancelled") == set()
    assert exported_ids(member, "Observation", "Encounter?status=cancelled") == {"o-lab", "o-vital"}
