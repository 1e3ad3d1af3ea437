"""`_elements` on export, $everything and search: root elements cut in PostgreSQL, mandatory ones kept, SUBSETTED."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from exports import jobs, rules
from exports.models import ExportJob
from tests.builders import consent_for, days_ago, encounter, make_member, match_group, observation, store
from tests.export_world import exported_lines

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def subset(resource: dict, elements: list[str]) -> dict:
    """What the exporter's SQL makes of one stored body."""
    sql = (f"SELECT {rules.body_sql(resource['resourceType'], elements=elements)}"  # noqa: S608 - our own SQL
           " FROM (SELECT %s::jsonb AS body, 'claim'::text AS eob_use) AS r")
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps(resource)])
        return json.loads(cursor.fetchone()[0])


@pytest.mark.django_db
def test_a_subset_keeps_what_was_asked_the_mandatory_elements_and_is_tagged():
    body = observation("obs-1", "pt-1", days_ago(3))
    body["meta"]["tag"] = [{"system": "http://example.org/tags", "code": "keep"}]
    cut = subset(body, ["id", "subject"])
    assert set(cut) == {"resourceType", "id", "meta", "status", "code", "subject"}
    assert cut["meta"]["tag"] == [{"system": "http://example.org/tags", "code": "keep"}, SUBSETTED]
    assert cut["meta"]["lastUpdated"] == body["meta"]["lastUpdated"]
    get_fhir_model_class("Observation").model_validate(cut)  # still a valid resource


@pytest.mark.django_db
def test_a_type_prefixed_element_applies_to_that_type_only():
    patient_body = {"resourceType": "Patient", "id": "p", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
                    "name": [{"family": "Doe"}], "gender": "female"}
    assert set(subset(patient_body, ["Patient.gender"])) == {"resourceType", "id", "meta", "gender"}
    obs = observation("obs-2", "p", days_ago(3))
    assert subset(obs, ["Patient.gender"]) == obs  # no name applies to Observation: returned whole


@pytest.mark.django_db
def test_a_mandatory_choice_element_is_kept_whatever_its_type_suffix():
    body = {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": "aspirin"},
            "note": [{"text": "x"}]}
    assert set(subset(body, ["id"])) == {"resourceType", "id", "meta", "status", "intent", "subject",
                                         "medicationCodeableConcept"}


def test_mandatory_elements_are_the_r4_minimum_cardinality_ones():
    """The table written in exports.rules agrees with the FHIR models (min ≥ 1 root elements)."""
    for resource_type in rules.EXPORT_TYPES:
        model = get_fhir_model_class(resource_type)
        required = {f.alias or name for name, f in model.model_fields.items()
                    if (f.json_schema_extra or {}).get("element_property")
                    and (f.is_required() or (f.json_schema_extra or {}).get("element_required"))}
        assert required == set(rules.MANDATORY_ELEMENTS.get(resource_type, ())), resource_type


@pytest.fixture
def member_and_group(partner, settings, tmp_path):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.FHIR_BASE_URL = "http://testserver/fhir"
    member = make_member("pt-elements")
    store(encounter("enc-elements", member.fhir_id, days_ago(20)), member)
    store(observation("obs-elements", member.fhir_id, days_ago(20)), member)
    consent_for(member, partner, via="bulk-member-match")
    return member, match_group(partner, [member])


@pytest.mark.django_db(transaction=True)  # the chunk writer streams on a connection of its own
def test_an_export_with_elements_writes_subsets_of_every_line(partner, member_and_group):
    """What the Bulk Data tester checks: `_elements=id,Patient.meta` → every line of the Patient file has id, meta
    and the SUBSETTED tag, exactly {system, code}."""
    _, group = member_and_group
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.GROUP, group=group,
                                   params={"types": ["Patient", "Observation"], "elements": ["id", "Patient.meta"]},
                                   request_url="http://testserver/fhir/Group/x/$export",
                                   transaction_time=timezone.now())
    states = [jobs.run_chunk(chunk_id) for chunk_id in jobs.plan(job.id)]
    assert states and all(s.state in ("done", "last") for s in states), states
    assert jobs.finalize(job.id)  # the chunks' segments are published as files at the end
    lines = [json.loads(line) for line in exported_lines(job)]
    assert {r["resourceType"] for r in lines} == {"Patient", "Observation"}
    for resource in lines:
        assert resource["id"] and SUBSETTED in resource["meta"]["tag"]
        expected = {"resourceType", "id", "meta", *rules.MANDATORY_ELEMENTS.get(resource["resourceType"], ())}
        assert set(resource) == expected


def test_everything_and_search_answer_subsets_of_their_matches(api, member_and_group):
    member, _ = member_and_group
    bundle = api.get(f"/fhir/Patient/{member.fhir_id}/$everything?_elements=id&_type=Encounter,Observation").json()
    found = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert {r["resourceType"] for r in found} == {"Encounter", "Observation"}
    assert all(SUBSETTED in r["meta"]["tag"] and "subject" not in r for r in found)
    assert {"status", "class"} <= set(next(r for r in found if r["resourceType"] == "Encounter"))

    searched = api.get(f"/fhir/Observation?patient={member.fhir_id}&_elements=subject").json()
    observations = [e["resource"] for e in searched["entry"] if e["search"]["mode"] == "match"]
    assert observations and all(set(r) == {"resourceType", "id", "meta", "status", "code", "subject"}
                                for r in observations)
    assert api.get(f"/fhir/Observation?patient={member.fhir_id}&_elements=a.b").status_code == 400
