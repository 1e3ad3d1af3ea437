"""Service levels (docs/service-levels.md): deadlines, urgent work first, workers shared fairly between partners.

The claim order is shown on job and unit rows directly; then with a real worker: one partner's large export
is queued first, another partner's small urgent export still completes first.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from exports.kind import EXPORT
from exports.models import ExportChunk, ExportJob
from matching.kind import MATCH
from matching.models import MatchBatch, MatchJob
from pdex.jobs import engine, servicelevels
from pdex.jobs.models import AsyncJob, WorkUnit
from tests.builders import consent_for, days_ago, encounter, make_member, match_group, store

pytestmark = pytest.mark.django_db(transaction=True)


def running_export(partner, *, units: int = 3, priority: int = AsyncJob.Priority.NORMAL, age_seconds: float = 0,
                   deadline_in: timedelta | None = None) -> ExportJob:
    """A running export of `units` pending chunks, asked for `age_seconds` ago."""
    created = timezone.now() - timedelta(seconds=age_seconds)
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, params={}, request_url="x",
                                   status=ExportJob.Status.RUNNING, priority=priority, progress_total=units)
    ExportJob.objects.filter(pk=job.pk).update(
        created_at=created, deadline=created + (deadline_in or timedelta(days=7)))
    ExportChunk.objects.bulk_create([ExportChunk(job=job, sequence=n, resource_type="Patient") for n in range(units)])
    return job


def lease_all(job: ExportJob, count: int) -> None:
    """`count` of the job's units are running under a live lease (a worker holds them)."""
    for unit in job.chunks.order_by("sequence")[:count]:
        assert engine.claim(EXPORT, "held", unit_id=unit.pk) is not None


def claimed_job(kind=EXPORT):
    unit = engine.claim(kind, "test")
    return unit.job_id if unit else None


def test_every_job_is_due_seven_days_after_its_request(partner, settings):
    job = running_export(partner)
    job.refresh_from_db()
    assert timedelta(days=7) - timedelta(seconds=5) < job.deadline - job.created_at <= timedelta(days=7)
    settings.JOB_DEADLINE_DAYS = 2
    other = MatchJob.objects.create(partner=partner, request_url="x")
    assert abs((other.deadline - other.created_at) - timedelta(days=2)) < timedelta(seconds=5)


def test_urgent_work_is_claimed_before_older_normal_work(make_partner):
    a, b = make_partner("A"), make_partner("B")
    running_export(a, age_seconds=600)
    urgent = running_export(b, priority=AsyncJob.Priority.URGENT)
    assert claimed_job() == urgent.pk


def test_the_partner_with_fewest_units_running_goes_first(make_partner):
    a, b = make_partner("A"), make_partner("B")
    large = running_export(a, units=50, age_seconds=600)
    small = running_export(b, units=2)
    assert claimed_job() == large.pk  # nobody runs anything: the older request first
    assert claimed_job() == small.pk  # A now holds one unit, B none
    order = [claimed_job() for _ in range(4)]
    # A and B take turns while B has work; then A has the workers to itself.
    assert order == [large.pk, small.pk, large.pk, large.pk]


def test_running_units_of_every_kind_count_for_their_partner(make_partner):
    a, b = make_partner("A"), make_partner("B")
    job = MatchJob.objects.create(partner=a, request_url="x", status=MatchJob.Status.RUNNING, progress_total=20)
    MatchBatch.objects.bulk_create([MatchBatch(job=job, sequence=n, start=10 * n, end=10 * n + 10) for n in range(2)])
    assert engine.claim(MATCH, "busy") is not None  # A's match batch runs
    running_export(a, age_seconds=600)
    theirs = running_export(b)
    assert claimed_job() == theirs.pk


def test_among_equals_the_earliest_deadline_goes_first(make_partner):
    a, b = make_partner("A"), make_partner("B")
    running_export(a, age_seconds=600)
    due_sooner = running_export(b, deadline_in=timedelta(hours=1))
    assert claimed_job() == due_sooner.pk


def test_a_job_s_units_go_in_order_and_a_held_unit_is_never_claimed_twice(partner):
    job = running_export(partner, units=3)
    lease_all(job, 1)
    claimed = [engine.claim(EXPORT, "w").sequence for _ in range(2)]
    assert claimed == [1, 2]
    assert engine.claim(EXPORT, "w") is None


def kick_off(api, partner, prefer: str):
    member = make_member(f"p{ExportJob.objects.count()}")
    consent_for(member, partner)
    group = match_group(partner, [member])
    return api.post(f"/fhir/Group/{group.pk}/$davinci-data-export", data=json.dumps({"resourceType": "Parameters"}),
                    content_type="application/fhir+json", HTTP_PREFER=prefer)


def job_of(response) -> ExportJob:
    assert response.status_code == 202, response.content
    return ExportJob.objects.get(pk=response["Content-Location"].rsplit("/", 1)[1])


def test_urgent_is_asked_for_in_the_prefer_header(partner, api):
    urgent = kick_off(api, partner, "respond-async, priority=urgent")
    assert job_of(urgent).priority == AsyncJob.Priority.URGENT
    assert urgent["Preference-Applied"] == "respond-async, priority=urgent"
    plain = kick_off(api, partner, "respond-async")
    assert job_of(plain).priority == AsyncJob.Priority.NORMAL
    assert plain["Preference-Applied"] == "respond-async"


def test_urgent_requests_can_be_turned_off(partner, api, settings):
    settings.JOB_URGENT_REQUESTS = False
    response = kick_off(api, partner, "respond-async, priority=urgent")
    assert job_of(response).priority == AsyncJob.Priority.NORMAL
    assert response["Preference-Applied"] == "respond-async"


def test_the_sweep_logs_a_job_nearing_its_deadline_once(make_partner, caplog):
    from pdex.jobs.tasks import sweep_stale_work

    a = make_partner("A")
    near = running_export(a, deadline_in=timedelta(hours=3))
    running_export(a, deadline_in=timedelta(days=5))
    with caplog.at_level(logging.WARNING, logger="pdex.jobs.servicelevels"):
        assert sweep_stale_work()["deadline_warnings"] == 1
        assert sweep_stale_work()["deadline_warnings"] == 0
    warnings = [r for r in caplog.records if r.name == "pdex.jobs.servicelevels"]
    assert len(warnings) == 1 and warnings[0].job == str(near.pk) and warnings[0].deadline_state == "due soon"
    near.refresh_from_db()
    assert near.deadline_warned_at is not None and near.deadline_state() == "due soon"


def test_fulfilment_figures(make_partner):
    a = make_partner("A")
    now = timezone.now()
    for status, hours, deadline_hours in (("completed", 2, 24), ("completed", 30, 24), ("failed", 1, 24),
                                          ("cancelled", 1, 24)):
        job = running_export(a, units=0, deadline_in=timedelta(hours=deadline_hours))
        ExportJob.objects.filter(pk=job.pk).update(status=status, finished_at=job.created_at + timedelta(hours=hours))
    figures = servicelevels.fulfilment(EXPORT, since=now - timedelta(days=1))
    assert (figures.finished, figures.completed, figures.failed, figures.within_deadline) == (4, 2, 1, 1)
    assert figures.success_rate == pytest.approx(2 / 3)
    assert figures.within_deadline_share == pytest.approx(0.5)
    assert figures.mean_seconds == pytest.approx(16 * 3600, rel=0.01)


# --- with a real worker ------------------------------------------------------------------------------------------

def member_with_visits(fhir_id: str, partner, visits: int = 3):
    member = make_member(fhir_id)
    for n in range(visits):
        store(encounter(f"{fhir_id}-e{n}", fhir_id, days_ago(30 + n)), member)
    consent_for(member, partner)
    return member


@pytest.mark.e2e
def test_a_small_urgent_export_overtakes_a_large_one_queued_before_it(make_partner, api_for, celery_worker_process,
                                                                        settings, tmp_path):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    large_partner, small_partner = make_partner("Large Plan"), make_partner("Small Plan")
    large_group = match_group(large_partner, [member_with_visits(f"l{k}", large_partner) for k in range(60)])
    small_group = match_group(small_partner, [member_with_visits("s0", small_partner)])
    body = json.dumps({"resourceType": "Parameters"})
    large = api_for(large_partner).post(f"/fhir/Group/{large_group.pk}/$davinci-data-export", data=body,
                                        content_type="application/fhir+json", HTTP_PREFER="respond-async")
    small = api_for(small_partner).post(f"/fhir/Group/{small_group.pk}/$davinci-data-export", data=body,
                                        content_type="application/fhir+json",
                                        HTTP_PREFER="respond-async, priority=urgent")
    assert large.status_code == small.status_code == 202
    large_job = ExportJob.objects.get(pk=large["Content-Location"].rsplit("/", 1)[1])
    small_job = ExportJob.objects.get(pk=small["Content-Location"].rsplit("/", 1)[1])
    # Both are queued before any worker runs: the large one is planned first, 120 chunks ahead of the small one.
    celery_worker_process(concurrency=1, extra_env={"EXPORT_CHUNK_MEMBERS": "1"})
    began = time.monotonic()
    while time.monotonic() - began < 180:
        small_job.refresh_from_db()
        if small_job.is_finished:
            break
        time.sleep(0.05)
    assert small_job.status == ExportJob.Status.COMPLETED
    large_job.refresh_from_db()
    done_then = large_job.chunks.filter(status=WorkUnit.Status.DONE, finished_at__lte=small_job.finished_at).count()
    assert large_job.progress_total >= 120
    assert done_then < large_job.progress_total / 4, "the small export waited behind the large one"
    while time.monotonic() - began < 240 and not large_job.is_finished:
        time.sleep(0.2)
        large_job.refresh_from_db()
    assert large_job.status == ExportJob.Status.COMPLETED
    assert small_job.finished_at < large_job.finished_at
