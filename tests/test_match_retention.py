"""Retention of match inputs: once a bulk match job expires (or is cancelled), nothing of the people it was asked
about remains in the database but counts and outcomes (matching.jobs.purge_expired_inputs)."""

from __future__ import annotations

import json
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from matching import jobs
from matching.models import MatchEntry, MatchJob, MemberMatchGroup
from pdex.jobs import asyncstatus
from tests.builders import EXAMPLE_PAYER_NPI, bulk_match_request, example_members

BULK = "/fhir/Group/$bulk-member-match"
# Distinctive names that exist nowhere else: the members we do not have, or whose consent has expired.
STRANGERS = ("Zebulonova", "Quixtrell")


def submitted_with_strangers() -> dict:
    body = bulk_match_request()
    for bundle, family in zip(body["parameter"][2:4], STRANGERS, strict=True):  # members 3 (unknown) and 4
        patient = next(p for p in bundle["part"] if p["name"] == "MemberPatient")["resource"]
        patient["name"][0]["family"] = family
    return body


def tables_holding(text: str) -> list[str]:
    """Every table of ours whose rows, as text, contain `text` (a full scan of the database)."""
    found = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT 1 FROM "{table}" AS t WHERE t::text ILIKE %s LIMIT 1', [f"%{text}%"])  # noqa: S608
            if cursor.fetchone():
                found.append(table)
    return found


def test_after_expiry_no_submitted_demographics_remain(api, partner, settings):
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    example_members()
    response = api.post(BULK, data=json.dumps(submitted_with_strangers()), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    job = MatchJob.objects.get(partner=partner)
    for batch_id in jobs.plan(str(job.pk)):
        jobs.run_batch(batch_id)
    assert jobs.finish(str(job.pk))
    job.refresh_from_db()
    counts = (job.matched, job.no_match, job.consent_constrained)
    outcomes = sorted(MatchEntry.objects.filter(job=job).values_list("outcome", flat=True))
    for name in STRANGERS:
        assert tables_holding(name), f"{name} should be stored while the job is live"

    asyncstatus.expire_outputs(now=job.expires_at + timedelta(seconds=1))

    for name in STRANGERS:
        assert tables_holding(name) == [], name
    job.refresh_from_db()
    assert (job.matched, job.no_match, job.consent_constrained) == counts
    assert sorted(MatchEntry.objects.filter(job=job).values_list("outcome", flat=True)) == outcomes
    assert not MatchEntry.objects.filter(job=job).exclude(bundle={}).exists()
    assert not MatchEntry.objects.filter(job=job).exclude(reason="").exists()
    assert list(MemberMatchGroup.objects.filter(job=job).values_list("code", flat=True)) == ["match"]
    assert jobs.purge_expired_inputs(timezone.now() + timedelta(days=2)) == 0  # nothing left: safe again


def test_a_live_job_keeps_its_inputs(api, partner):
    example_members()
    api.post(BULK, data=json.dumps(submitted_with_strangers()), content_type="application/fhir+json",
             HTTP_PREFER="respond-async")
    assert jobs.purge_expired_inputs(timezone.now()) == 0
    assert tables_holding(STRANGERS[0])
