"""Ingest: streamed NDJSON(.gz), validation with line numbers, COPY + upsert idempotence, member resolution."""

from __future__ import annotations

import gzip
import io
import json
import re
from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command
from django.db import connection

from pdex import ingest
from pdex.models import Member, Resource
from tests.builders import FIXTURES, SAMPLE

PATIENT = {
    "resourceType": "Patient", "id": "p-ingest-1", "gender": "female", "birthDate": "1980-02-29",
    "name": [{"use": "official", "family": "Núñez", "given": ["Ana", "María"]}],
    "address": [{"use": "home", "postalCode": "02139"}],
}
OBSERVATION = {
    "resourceType": "Observation", "id": "o-ingest-1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
    "subject": {"reference": "urn:uuid:p-ingest-1"}, "effectiveDateTime": "2024-03-01T10:00:00Z",
}


def readme_counts() -> dict[str, int]:
    """The per-type table of sample/README.md."""
    text = (SAMPLE / "README.md").read_text()
    return {kind: int(count.replace(",", ""))
            for kind, count in re.findall(r"^\| ([A-Za-z]+) \| ([\d,]+) \|$", text, flags=re.MULTILINE)}


def store_fingerprint() -> tuple:
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT count(*), md5(string_agg(
                concat_ws('|', resource_type, fhir_id, member_id, body::text, last_updated, service_start,
                          service_end, sensitive, clinical_status, eob_use, pa_status, pa_status_changed,
                          pa_period_end, pa_drug, refs::text, ingested_at),
                ',' ORDER BY resource_type, fhir_id))
            FROM pdex_resource""")
        resources = cursor.fetchone()
        cursor.execute("SELECT md5(string_agg(concat_ws('|', fhir_id, umb, family, given, birth_date, updated_at),"
                       " ',' ORDER BY fhir_id)) FROM pdex_member")
        return resources, cursor.fetchone()


def write_ndjson(path, lines: list[str]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")


@pytest.mark.django_db
def test_the_sample_loads_with_its_readme_counts_and_a_second_load_changes_nothing():
    first = ingest.load_paths([SAMPLE], workers=2, progress=False)
    expected = readme_counts()
    assert sum(expected.values()) == 3096
    assert not first.bad
    assert dict(first.inserted) == expected
    assert ingest.store_counts() == expected
    assert Member.objects.count() == expected["Patient"]
    # Every member-owned resource found its member; shared ones have none.
    assert not Resource.objects.filter(member__isnull=True).exclude(
        resource_type__in=["Organization", "Practitioner"]).exists()
    assert not Resource.objects.filter(member__isnull=False,
                                       resource_type__in=["Organization", "Practitioner"]).exists()
    before = store_fingerprint()

    second = ingest.load_paths([SAMPLE], workers=2, progress=False)
    assert sum(second.inserted.values()) == sum(second.updated.values()) == 0
    assert dict(second.unchanged) == expected
    assert store_fingerprint() == before


@pytest.mark.django_db
def test_bad_lines_are_reported_with_file_and_line_and_nothing_else_is_lost(tmp_path):
    path = tmp_path / "mixed.ndjson.gz"
    write_ndjson(path, [
        json.dumps(PATIENT),
        '{"resourceType": "Observation", "id": "broken", ',                       # 2: not JSON
        json.dumps({"id": "no-type"}),                                              # 3: not a resource
        json.dumps({**OBSERVATION, "id": "o-bad", "status": {"x": "SECRET-VALUE"}}),  # 4: invalid FHIR
        "",                                                                          # 5: blank, ignored
        json.dumps({"resourceType": "Spaceship", "id": "s1"}),                     # 6: unknown type
        json.dumps(OBSERVATION),                                                    # 7: fine
    ])
    report = ingest.load_paths([path], workers=1, progress=False)
    assert [(bad.path, bad.line) for bad in report.bad] == [(str(path), n) for n in (2, 3, 4, 6)]
    assert "not JSON" in report.bad[0].reason
    assert report.bad[2].reason.startswith("invalid Observation: status:")
    assert not any("SECRET" in bad.reason for bad in report.bad), "reasons never echo the data"
    assert "Spaceship" in report.bad[3].reason
    assert dict(report.inserted) == {"Patient": 1, "Observation": 1}
    observation = Resource.objects.get(resource_type="Observation", fhir_id="o-ingest-1")
    assert observation.member.fhir_id == "p-ingest-1"        # urn:uuid: resolved
    assert observation.service_start == datetime(2024, 3, 1, 10, tzinfo=UTC)


@pytest.mark.django_db
def test_patients_become_members_with_normalized_demographics():
    ingest.load_resources([PATIENT])
    member = Member.objects.get(fhir_id="p-ingest-1")
    assert (member.family, member.given) == ("nunez", "ana maria")
    assert (member.birth_date, member.gender, member.postal_code) == (date(1980, 2, 29), "female", "02139")
    assert member.umb == ingest.umb_for("p-ingest-1") == "UMB-" + member.umb[4:]
    assert len(member.umb) == 16
    patient_row = Resource.objects.get(resource_type="Patient", fhir_id="p-ingest-1")
    assert patient_row.member == member


@pytest.mark.django_db
def test_resources_loaded_before_their_patient_get_their_member_afterwards():
    ingest.load_resources([OBSERVATION])
    observation = Resource.objects.get(fhir_id="o-ingest-1")
    assert observation.member is None
    ingest.load_resources([PATIENT])
    observation.refresh_from_db()
    assert observation.member.fhir_id == "p-ingest-1"


@pytest.mark.django_db
def test_a_changed_resource_is_updated_in_place_and_an_unchanged_one_is_left_alone():
    ingest.load_resources([PATIENT, OBSERVATION])
    ingested_at = Resource.objects.get(fhir_id="p-ingest-1").ingested_at
    changed = {**OBSERVATION, "effectiveDateTime": "2025-01-01T00:00:00Z"}
    report = ingest.load_resources([PATIENT, changed])
    assert report.updated == {"Observation": 1}
    assert report.unchanged == {"Patient": 1}
    assert Resource.objects.get(fhir_id="o-ingest-1").service_start == datetime(2025, 1, 1, tzinfo=UTC)
    assert Resource.objects.get(fhir_id="p-ingest-1").ingested_at == ingested_at
    assert Resource.objects.filter(fhir_id="o-ingest-1").count() == 1


@pytest.mark.django_db
def test_the_last_copy_of_a_resource_in_one_load_wins():
    later = {**OBSERVATION, "effectiveDateTime": "2025-06-01T00:00:00Z"}
    report = ingest.load_resources([PATIENT, OBSERVATION, later])
    assert report.inserted == {"Patient": 1, "Observation": 1}
    assert Resource.objects.get(fhir_id="o-ingest-1").service_start == datetime(2025, 6, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_missing_meta_last_updated_is_filled_in_from_the_record_date():
    ingest.load_resources([PATIENT, OBSERVATION])
    observation = Resource.objects.get(fhir_id="o-ingest-1")
    assert observation.body["meta"]["lastUpdated"] == "2024-03-01T10:00:00Z"
    assert observation.last_updated == datetime(2024, 3, 1, 10, tzinfo=UTC)


@pytest.mark.django_db
def test_no_validate_accepts_what_only_the_fhir_model_would_refuse():
    odd = {**OBSERVATION, "id": "o-odd", "status": 42}
    assert ingest.load_resources([odd]).bad
    assert not ingest.load_resources([odd], validate=False).bad
    assert Resource.objects.filter(fhir_id="o-odd").exists()


@pytest.mark.django_db
def test_folders_are_walked_and_plain_and_gzipped_files_both_load(tmp_path):
    (tmp_path / "nested").mkdir()
    write_ndjson(tmp_path / "nested" / "Observation.ndjson", [json.dumps(OBSERVATION)])
    write_ndjson(tmp_path / "Patient.ndjson.gz", [json.dumps(PATIENT)])
    (tmp_path / "notes.txt").write_text("not data")
    files = ingest.ndjson_files([tmp_path])
    assert [f.name for f in files] == ["Patient.ndjson.gz", "Observation.ndjson"]
    report = ingest.load_paths([tmp_path], workers=1, progress=False)
    assert report.inserted == {"Patient": 1, "Observation": 1}


@pytest.mark.django_db
def test_load_ndjson_command_prints_a_count_table_and_the_bad_lines(tmp_path):
    path = tmp_path / "data.ndjson"
    write_ndjson(path, [json.dumps(PATIENT), "{oops", json.dumps(OBSERVATION)])
    out, err = io.StringIO(), io.StringIO()
    call_command("load_ndjson", str(path), "--workers", "1", stdout=out, stderr=err)
    assert f"{path}:2: not JSON" in err.getvalue()
    table = out.getvalue()
    assert re.search(r"^Observation\s+1\s+1\s+0\s+0\s+1$", table, flags=re.MULTILINE)
    assert re.search(r"^total\s+2\s+2\s+0\s+0\s+2$", table, flags=re.MULTILINE)
    assert "1 bad line(s) skipped" in table


def test_no_progress_bar_off_a_terminal():
    assert isinstance(ingest._progress_bar(False), ingest._NoBar)


@pytest.mark.django_db
def test_admin_shows_members_and_resources_read_only(admin_client):
    ingest.load_resources([PATIENT, OBSERVATION])
    member = Member.objects.get(fhir_id="p-ingest-1")
    observation = Resource.objects.get(fhir_id="o-ingest-1")

    page = admin_client.get("/admin/pdex/member/", {"q": member.umb})
    assert page.status_code == 200 and member.umb in page.content.decode()
    listing = admin_client.get("/admin/pdex/resource/", {"q": member.umb, "resource_type": "Observation",
                                                          "sensitive": "no"})
    assert listing.status_code == 200 and "Observation/o-ingest-1" in listing.content.decode()
    assert "Observation/o-ingest-1" not in admin_client.get(
        "/admin/pdex/resource/", {"sensitive": "yes"}).content.decode()
    detail = admin_client.get(f"/admin/pdex/resource/{observation.pk}/change/").content.decode()
    assert "&quot;resourceType&quot;: &quot;Observation&quot;,\n" in detail   # indented JSON
    assert admin_client.get("/admin/pdex/resource/add/").status_code == 403
    assert admin_client.post(f"/admin/pdex/member/{member.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Member.objects.filter(pk=member.pk).exists()


@pytest.mark.django_db
def test_the_sample_has_every_resource_type_and_the_shared_resources_it_references():
    assert sum(p.stat().st_size for p in SAMPLE.glob("*.ndjson.gz")) < 1024 * 1024
    report = ingest.load_paths([SAMPLE], workers=1, progress=False)
    assert not report.bad
    # The pinned resources hold one of every type of the full Synthea set (scripts/make_test_fixtures.py).
    pinned = {json.loads(line)["resourceType"] for line in (FIXTURES / "synthea-pinned.ndjson").open()}
    assert set(report.inserted) == set(readme_counts()) == pinned
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT count(*) FROM pdex_resource r, unnest(r.refs) ref
            WHERE NOT EXISTS (SELECT 1 FROM pdex_resource s
                              WHERE s.resource_type || '/' || s.fhir_id = ref)""")
        assert cursor.fetchone()[0] == 0
    assert not Resource.objects.filter(member__isnull=True).exclude(
        resource_type__in=["Organization", "Practitioner"]).exists()


@pytest.mark.django_db
def test_provenance_belongs_to_the_member_its_targets_belong_to():
    other = {**PATIENT, "id": "p-ingest-2"}
    other_observation = {**OBSERVATION, "id": "o-ingest-2", "subject": {"reference": "Patient/p-ingest-2"}}

    def provenance(fhir_id: str, *targets: str) -> dict:
        return {"resourceType": "Provenance", "id": fhir_id, "recorded": "2024-03-02T10:00:00Z",
                "target": [{"reference": t} for t in targets],
                "agent": [{"who": {"reference": "Organization/payer"}}]}

    ingest.load_resources([
        provenance("prov-own", "Observation/o-ingest-1"),
        provenance("prov-mixed", "Observation/o-ingest-1", "Observation/o-ingest-2"),
        PATIENT, other, OBSERVATION, other_observation,
    ])
    owners = dict(Resource.objects.filter(resource_type="Provenance").values_list("fhir_id", "member__fhir_id"))
    assert owners == {"prov-own": "p-ingest-1", "prov-mixed": None}
