"""synthesize_payer_data: deterministic Coverage, prior authorizations, labels, history, run-off and copies."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, date, datetime

import pytest
from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from pdex import ingest
from pdex.extract import extract_configured, reference_target
from pdex.models import Member, Resource
from pdex.synthesize import PA_PER_MEMBER, SYNTHETIC_PREFIX, synthesize
from tests.conftest import ROOT

SAMPLE = ROOT / "sample"
AS_OF = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def fingerprint(*, with_ingested_at: bool = False) -> str:
    """Every row of the store as text (member by fhir id), hashed."""
    stamp = ", r.ingested_at" if with_ingested_at else ""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT md5(string_agg(concat_ws('|', r.resource_type, r.fhir_id, m.fhir_id, m.umb, m.member_number,
                                            m.subscriber_id, r.body::text, r.last_updated, r.service_start,
                                            r.service_end, r.sensitive, r.pa_status, r.pa_status_changed,
                                            r.pa_period_end, r.pa_drug, r.refs::text{stamp}),
                                  ',' ORDER BY r.resource_type, r.fhir_id))
            FROM pdex_resource r LEFT JOIN pdex_member m ON m.id = r.member_id""")  # noqa: S608 - constant
        return cursor.fetchone()[0]


def load_sample() -> None:
    report = ingest.load_paths([SAMPLE], workers=1, progress=False)
    assert not report.bad


@pytest.fixture
def synthesized(db):
    load_sample()
    return synthesize(seed=42, as_of=AS_OF)


def pas():
    return Resource.objects.filter(resource_type="ExplanationOfBenefit", eob_use="preauthorization")


def test_coverage_for_every_member_with_our_member_id_and_payor(synthesized):
    members = Member.objects.all()
    assert synthesized.members == members.count() == 8
    assert not synthesized.load.bad, "every generated resource validates with the R4B models"
    payer = Resource.objects.get(resource_type="Organization", fhir_id=settings.PAYER_ORGANIZATION_ID)
    assert payer.body["identifier"][0] == {"system": "http://hl7.org/fhir/sid/us-npi", "value": settings.PAYER_NPI}
    assert payer.body["name"] == settings.PAYER_NAME
    for member in members:
        assert re.fullmatch(r"M\d{9}", member.member_number) and re.fullmatch(r"S\d{9}", member.subscriber_id)
        coverage = Resource.objects.get(resource_type="Coverage", member=member).body
        assert coverage["identifier"][0]["type"]["coding"][0]["code"] == "MB"
        assert coverage["identifier"][0]["system"] == settings.MEMBER_ID_SYSTEM
        assert coverage["identifier"][0]["value"] == member.member_number
        assert coverage["subscriberId"] == member.subscriber_id
        assert coverage["beneficiary"] == {"reference": f"Patient/{member.fhir_id}"}
        assert coverage["payor"][0]["reference"] == f"Organization/{settings.PAYER_ORGANIZATION_ID}"
        assert {c["type"]["coding"][0]["code"] for c in coverage["class"]} == {"group", "plan"}
        assert "start" in coverage["period"]
        # A coverage that ended was last updated when it ended: incremental exports resend it.
        assert coverage["meta"]["lastUpdated"][:10] == coverage["period"].get("end", coverage["period"]["start"])
    assert Resource.objects.filter(resource_type="Coverage", body__period__has_key="end").exists()


def test_prior_authorizations_cover_every_status_and_timeline(synthesized):
    assert pas().count() == PA_PER_MEMBER * 8
    assert set(pas().values_list("pa_status", flat=True)) == {"approved", "partial", "pending", "denied",
                                                                "cancelled"}
    year_ago = NOW - relativedelta(months=12)
    current = pas().filter(pa_status="approved", pa_drug=False, pa_period_end__gt=NOW)
    assert current.exists(), "an approved PA in effect today"
    assert pas().filter(pa_status="approved", pa_status_changed__gte=year_ago, pa_period_end__lt=NOW).exists()
    assert pas().filter(pa_status="approved", pa_status_changed__lt=year_ago).exists(), "changed long ago"
    assert pas().filter(pa_drug=True).exists()
    for pa in pas():
        assert pa.body["meta"]["profile"] == [
            "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization"]
        assert pa.member_id and pa.body["patient"]["reference"] == f"Patient/{pa.member.fhir_id}"
        assert pa.pa_status_changed <= NOW


def test_each_prior_authorization_has_its_supporting_document(synthesized):
    documents = Resource.objects.filter(resource_type="DocumentReference")
    assert documents.count() == pas().count()
    for pa in pas():
        (info,) = pa.body["supportingInfo"]
        assert info["category"]["coding"][0]["code"] == "additionalInformation"
        kind, fhir_id = reference_target(info["valueReference"]["reference"])
        document = documents.get(fhir_id=fhir_id)
        assert kind == "DocumentReference" and document.member_id == pa.member_id


def test_sensitivity_labels_on_a_subset(synthesized):
    labelled = Resource.objects.filter(body__meta__has_key="security")
    assert synthesized.labelled > 0
    assert labelled.count() >= synthesized.labelled
    assert not labelled.filter(sensitive=False).exists()
    codes = {label["code"] for body in labelled.values_list("body", flat=True) for label in body["meta"]["security"]}
    assert codes <= {"PSY", "SUD", "HIV", "R"} and len(codes) >= 2
    # a subset, not everything
    assert labelled.count() < Resource.objects.filter(member__isnull=False).count() / 10


def test_members_have_old_and_recent_history_and_run_off_claims(synthesized):
    floor = NOW - relativedelta(years=5)
    for member in Member.objects.all():
        encounters = Resource.objects.filter(member=member, resource_type="Encounter")
        assert encounters.filter(service_start__gte=floor).exists()
        if member.birth_date < floor.date():
            assert encounters.filter(service_start__lt=floor).exists()
    runoff = Resource.objects.filter(body__meta__tag__contains=[{"code": "runoff"}])
    outside = Resource.objects.filter(body__meta__tag__contains=[{"code": "runoff-outside-window"}])
    assert runoff.exists() and outside.exists()
    for row in runoff:
        assert row.service_start >= floor and row.last_updated >= NOW - relativedelta(days=31)
        assert row.body["meta"]["lastUpdated"].startswith(row.last_updated.strftime("%Y-%m-%dT"))
    assert all(row.service_start < floor for row in outside)


def test_missing_history_is_generated(db):
    """Ten years on, nobody has a recent visit: each member gets one, valid and inside the window."""
    load_sample()
    later = date(2036, 6, 1)
    synthesize(seed=42, as_of=later)
    visits = Resource.objects.filter(resource_type="Encounter", fhir_id__startswith=f"{SYNTHETIC_PREFIX}new-")
    assert visits.count() == Member.objects.count()
    assert all(v.service_start >= datetime(2031, 6, 1, tzinfo=UTC) for v in visits)
    assert Resource.objects.filter(resource_type="ExplanationOfBenefit", eob_use="claim",
                                   fhir_id__startswith=f"{SYNTHETIC_PREFIX}new-").count() == visits.count()


def test_same_seed_same_rows_and_rerunning_changes_nothing(synthesized):
    before = fingerprint(with_ingested_at=True)
    again = synthesize(seed=42, as_of=AS_OF)
    assert again.labelled == again.runoff == 0
    assert sum(again.load.inserted.values()) == sum(again.load.updated.values()) == 0
    assert fingerprint(with_ingested_at=True) == before

    # From scratch, the same seed gives the same rows.
    rows = fingerprint()
    Resource.objects.all().delete()
    Member.objects.all().delete()
    load_sample()
    synthesize(seed=42, as_of=AS_OF)
    assert fingerprint() == rows


def test_another_seed_gives_other_numbers(synthesized):
    numbers = set(Member.objects.values_list("member_number", flat=True))
    synthesize(seed=7, as_of=AS_OF)
    assert numbers.isdisjoint(Member.objects.values_list("member_number", flat=True))


def test_multiply_makes_copies_with_fresh_ids_and_correct_columns(synthesized):
    owned_before = Resource.objects.filter(member__isnull=False).count()
    shared_before = Resource.objects.filter(member__isnull=True).count()
    synthesize(seed=42, as_of=AS_OF, multiply=3)
    assert Member.objects.count() == 24
    assert Resource.objects.filter(member__isnull=False).count() == 3 * owned_before
    assert Resource.objects.filter(member__isnull=True).count() == shared_before
    existing = {f"{t}/{i}" for t, i in Resource.objects.values_list("resource_type", "fhir_id")}
    copies = Resource.objects.filter(member__fhir_id__endswith="-x3").select_related("member")
    assert copies.count() == owned_before
    for row in copies:
        text = json.dumps(row.body)
        for reference in re.findall(r'"reference": "([^"#][^"]*)"', text):
            target = reference_target(reference)
            assert target and f"{target[0]}/{target[1]}" in existing, reference
        columns = extract_configured(row.body)
        assert columns.patient_id == row.member.fhir_id
        assert (columns.service_start, columns.sensitive, columns.pa_status, columns.last_updated) == (
            row.service_start, row.sensitive, row.pa_status, row.last_updated)
    original = Member.objects.order_by("fhir_id").first()
    copy = Member.objects.get(fhir_id=original.fhir_id + "-x2")
    assert copy.umb != original.umb and copy.member_number == original.member_number + "-x2"
    coverage = Resource.objects.get(resource_type="Coverage", member=copy).body
    assert coverage["identifier"][0]["value"] == copy.member_number
    assert coverage["subscriberId"] == copy.subscriber_id
    patient = Resource.objects.get(resource_type="Patient", member=copy).body
    assert patient["id"] == copy.fhir_id and patient["name"][0]["family"].endswith(" X2")
    assert copy.family.endswith(" x2")

    before = fingerprint(with_ingested_at=True)
    synthesize(seed=42, as_of=AS_OF, multiply=3)
    assert fingerprint(with_ingested_at=True) == before


def test_command_prints_what_it_made(db):
    load_sample()
    out = io.StringIO()
    call_command("synthesize_payer_data", "--seed", "42", "--as-of", "2026-11-23", stdout=out)
    text = out.getvalue()
    assert "8 members: generated 8 Coverage, 24 DocumentReference, 24 ExplanationOfBenefit, 1 Organization" in text
    assert re.search(r"^Coverage\s+8\s+8\s+0\s+0\s+8$", text, flags=re.MULTILINE)
