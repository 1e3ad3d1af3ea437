"""The export job's state machine, driven directly (no worker): plan, lease, write, finish, finalize, recover."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from consent.models import Consent
from consent.services import revoke
from exports import jobs, rules
from exports.kind import EXPORT
from exports.models import ExportChunk, ExportFilePart, ExportJob
from exports.params import JobParams
from exports.writer import ChunkResult
from pdex.fhir import TooManyRequests
from pdex.jobs import asyncstatus, engine
from pdex.jobs.models import OutputFile
from pdex.models import AuditEvent
from tests.builders import day, days_ago
from tests.export_world import assert_p2p_export, build_world, exported_lines

# The chunk writer streams on a connection of its own, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    from exports.writer import close_stream_connection

    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_CHUNK_MEMBERS = 1
    settings.JOB_MAX_ATTEMPTS = 3
    yield
    close_stream_connection()  # the test database is dropped at the end of the run


@pytest.fixture
def world(partner):
    return build_world(partner)


def new_job(partner, world, **params) -> ExportJob:
    return ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, group=world.group,
                                    params=params, request_url="http://testserver/fhir/Group/x/$davinci-data-export",
                                    transaction_time=timezone.now())


def every_type() -> JobParams:
    return JobParams(window=rules.export_window(request_time=timezone.now()))


def run_all(job: ExportJob) -> list[str]:
    """Every chunk, then the finalize the last one asks for (what the export and control queues do)."""
    states = [jobs.run_chunk(chunk_id).state for chunk_id in jobs.plan(job.id)]
    if "last" in states:
        jobs.finalize(job.id)
    job.refresh_from_db()
    return states


def test_plan_rechecks_consent_and_splits_members_by_policy(partner, world):
    job = new_job(partner, world, types=["Patient", "Encounter", "Organization"])
    chunk_ids = jobs.plan(job.id)
    job.refresh_from_db()
    chunks = ExportChunk.objects.filter(pk__in=chunk_ids)
    assert job.status == ExportJob.Status.RUNNING and job.member_count == 2
    assert job.progress_total == len(chunk_ids) == 4  # 2 members (1 per chunk) × 2 member types
    planned = {m for c in chunks for m in c.member_ids}
    assert planned == {world.members["sens"].pk, world.members["reg"].pk}
    assert {(c.member_ids[0], tuple(c.regular_member_ids)) for c in chunks} == {
        (world.members["sens"].pk, ()), (world.members["reg"].pk, (world.members["reg"].pk,))}
    [excluded] = job.planning_messages
    assert excluded["severity"] == "warning" and "1 member(s) excluded" in excluded["diagnostics"]
    assert world.members["revoked"].fhir_id not in excluded["diagnostics"]


def test_plan_runs_once(partner, world):
    job = new_job(partner, world)
    first = jobs.plan(job.id)
    assert sorted(jobs.plan(job.id)) == sorted(first)  # a redelivered plan only re-nudges pending chunks
    assert ExportChunk.objects.filter(job=job).count() == len(first)


def test_a_whole_export_keeps_every_p2p_rule(partner, world):
    job = new_job(partner, world)
    states = run_all(job)
    assert states.count("last") == 1 and set(states) <= {"done", "last"}
    assert job.status == ExportJob.Status.COMPLETED and job.progress_done == job.progress_total
    resources = assert_p2p_export(exported_lines(job), world)
    assert job.counts["Encounter"] == 2 and job.counts["Practitioner"] == 2
    assert sum(job.counts.values()) == len(resources)
    error = OutputFile.objects.get(job_id=job.id, kind=OutputFile.Kind.ERROR)
    assert error.resource_type == "OperationOutcome" and error.count == 1
    manifest = asyncstatus.build_manifest(job)
    assert {item["type"] for item in manifest["output"]} >= {"Patient", "Encounter", "Provenance", "Organization"}
    assert AuditEvent.objects.filter(action="export-complete", partner=partner).exists()


def output_types(job: ExportJob) -> set[str]:
    return set(OutputFile.objects.filter(job_id=job.id, kind="output").values_list("resource_type", flat=True))


def test_types_limit_what_is_written_strictly(partner, world):
    """Bulk Data `_type`: "The response SHALL be filtered to only include resources of the specified resource
    types": no transmitter Provenance (nor the Organization it names) unless the client lets Provenance in."""
    job = new_job(partner, world, types=["Encounter"])
    run_all(job)
    assert output_types(job) == {"Encounter"}


def test_provenance_in_the_types_brings_the_transmitter_and_our_organization(partner, world):
    job = new_job(partner, world, types=["Encounter", "Provenance", "Organization"])
    run_all(job)
    assert output_types(job) == {"Encounter", "Provenance", "Organization"}
    lines = [json.loads(line) for line in exported_lines(job)]
    organizations = {r["id"] for r in lines if r["resourceType"] == "Organization"}
    agents = {a["who"]["reference"] for r in lines if r["resourceType"] == "Provenance" for a in r["agent"]}
    assert f"Organization/{settings.PAYER_ORGANIZATION_ID}" in agents
    assert {ref.split("/")[1] for ref in agents} <= organizations  # no Provenance agent dangles


def test_without_organization_in_the_types_the_provenance_comes_alone(partner, world):
    job = new_job(partner, world, types=["Encounter", "Provenance"])
    run_all(job)
    assert output_types(job) == {"Encounter", "Provenance"}


def test_a_chunk_run_twice_overwrites_its_own_files(partner, world):
    job = new_job(partner, world, types=["Encounter", "Observation"])
    chunk_ids = jobs.plan(job.id)
    jobs.run_chunk(chunk_ids[0])
    before = set(ExportFilePart.objects.filter(job=job).values_list("storage_key", "count"))
    assert before
    assert jobs.run_chunk(chunk_ids[0]).state == "idle"  # a redelivered message finds it done
    ExportChunk.objects.filter(pk=chunk_ids[0]).update(status=ExportChunk.Status.PENDING)
    ExportJob.objects.filter(pk=job.pk).update(progress_done=0)
    assert jobs.run_chunk(chunk_ids[0]).state == "done"
    assert set(ExportFilePart.objects.filter(job=job).values_list("storage_key", "count")) == before


def test_files_split_at_the_size_limit(partner, world, settings):
    settings.EXPORT_FILE_MAX_BYTES = 600
    job = new_job(partner, world, types=["Encounter", "Observation", "Patient"])
    run_all(job)
    files = OutputFile.objects.filter(job_id=job.id, resource_type="Observation")
    assert files.count() >= 2 and all(f.size <= 600 or f.count == 1 for f in files)
    assert_p2p_export(exported_lines(job), type(world)(world.group, world.members,
                                                      {r for r in world.expected if r.split("/")[0] in
                                                       ("Encounter", "Observation", "Patient")},
                                                      world.withheld), transmitter=False)


def test_only_one_worker_holds_a_lease(partner, world):
    job = new_job(partner, world)
    chunk_id = jobs.plan(job.id)[0]
    assert jobs.lease(chunk_id, "a") is not None
    assert jobs.lease(chunk_id, "b") is None
    later = timezone.now() + timedelta(seconds=3600)
    assert jobs.lease(chunk_id, "c", now=later) is not None  # a's lease expired: c takes over
    with pytest.raises(jobs.LeaseLost):
        jobs.heartbeat(chunk_id, "a")
    chunk = ExportChunk.objects.get(pk=chunk_id)
    with pytest.raises(jobs.LeaseLost):
        jobs.finish_chunk(chunk, "a", ChunkResult())
    assert chunk.attempts == 2


def test_the_last_chunk_to_finish_is_counted_once(partner, world):
    job = new_job(partner, world, types=["Patient"])
    chunk_ids = jobs.plan(job.id)
    assert len(chunk_ids) == 2
    results = []
    for n, chunk_id in enumerate(chunk_ids):
        chunk = jobs.lease(chunk_id, f"w{n}")
        results.append(jobs.finish_chunk(chunk, f"w{n}", ChunkResult()))
    assert results == [False, True]
    job.refresh_from_db()
    assert job.progress_done == 2 and job.finalize_started_at is not None


def test_stale_leases_are_requeued_and_exhausted_ones_fail_the_job(partner, world):
    job = new_job(partner, world, types=["Patient"])
    first, second = jobs.plan(job.id)
    jobs.lease(first, "dead")
    later = timezone.now() + timedelta(seconds=3600)
    found = engine.sweep(now=later, send=False)
    assert found.units[EXPORT.job_model] == [first, second]  # stale lease; stalled pending chunk
    ExportChunk.objects.filter(pk=second).update(status=ExportChunk.Status.RUNNING, attempts=3,
                                                 lease_expires=timezone.now())
    engine.sweep(now=later, send=False)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.FAILED
    assert job.error["issue"][0]["severity"] == "error"


def test_a_chunk_that_keeps_failing_fails_the_job(partner, world, monkeypatch):
    from exports import writer

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "write_chunk", broken)
    job = new_job(partner, world, types=["Patient"])
    chunk_id = jobs.plan(job.id)[0]
    outcomes = []
    for _ in range(3):
        outcomes.append(jobs.run_chunk(chunk_id))
        assert jobs.run_chunk(chunk_id).state == "idle"  # backing off: not leased again yet
        ExportChunk.objects.filter(pk=chunk_id).update(not_before=None)  # …until its back-off has passed
    assert [o.state for o in outcomes] == ["retry", "retry", "failed"]
    assert outcomes[0].retry_in == 2
    job.refresh_from_db()
    assert job.status == ExportJob.Status.FAILED
    assert "failed 3 times" in job.error["issue"][0]["diagnostics"]


def test_cancelled_jobs_write_nothing_more(partner, world):
    job = new_job(partner, world, types=["Patient", "Encounter"])
    chunk_ids = jobs.plan(job.id)
    jobs.run_chunk(chunk_ids[0])
    asyncstatus.cancel_job(job)
    assert [jobs.run_chunk(c).state for c in chunk_ids[1:]] == ["idle"] * (len(chunk_ids) - 1)
    assert not OutputFile.objects.filter(job_id=job.id).exists()


def test_a_chunk_finishing_after_a_cancel_removes_its_files(partner, world):
    job = new_job(partner, world, types=["Patient"])
    chunk_id = jobs.plan(job.id)[0]
    chunk = jobs.lease(chunk_id, "w")
    from exports import writer
    from pdex.jobs.storage import get_storage

    result = writer.write_chunk(chunk, jobs.job_params(job).context())
    keys = [f.storage_key for f in result.files]
    assert keys and all(get_storage().exists(key) for key in keys)
    ExportJob.objects.filter(pk=job.pk).update(status=ExportJob.Status.CANCELLED)
    assert jobs.finish_chunk(chunk, "w", result) is False
    assert not OutputFile.objects.filter(job_id=job.id).exists()
    assert not ExportFilePart.objects.filter(job=job).exists()
    assert not any(get_storage().exists(key) for key in keys)


def test_no_consenting_member_completes_with_only_the_error_file(partner, world):
    for consent in Consent.objects.filter(partner=partner):
        revoke(consent, "member asked us to stop")
    job = new_job(partner, world)
    assert jobs.plan(job.id) == []
    assert jobs.finalize(job.id)  # the plan asked for it at once (control queue)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED
    assert list(OutputFile.objects.filter(job_id=job.id).values_list("kind", flat=True)) == ["error"]


def test_too_many_running_exports_answer_429(partner, world, settings):
    settings.EXPORT_MAX_RUNNING_JOBS = 2
    for _ in range(2):
        new_job(partner, world)
    with pytest.raises(TooManyRequests) as caught:
        jobs.start_export(partner=partner, kind=ExportJob.Kind.DAVINCI, params=every_type(), request_url="x",
                          group=world.group)
    assert caught.value.headers["Retry-After"]
    # The FHIR edge audits the refusal with what the exception declares (no view here, so no row yet).
    assert caught.value.audit_reason == "too many running exports"
    assert caught.value.audit_detail == {"running": 2, "limit": 2}
    ExportJob.objects.filter(partner=partner).update(status=ExportJob.Status.COMPLETED)
    job = jobs.start_export(partner=partner, kind=ExportJob.Kind.DAVINCI, params=every_type(), request_url="x",
                            group=world.group)
    assert job.status == ExportJob.Status.QUEUED


def test_type_filter_since_and_until_reach_the_rows(partner, world):
    filtered = new_job(partner, world, types=["Encounter", "Observation"],
                       type_filters=[f"Encounter?date=ge{day(days_ago(150))}", "Observation?category=laboratory"])
    run_all(filtered)
    assert filtered.counts.get("Encounter", 0) == 0  # the in-window encounters are 200 days old
    assert filtered.counts["Observation"] == 3  # both near ones, and the #sensitive member's sensitive one

    # The world's Patients were last updated 330 days ago, the rest of its data 180 days ago.
    between = days_ago(250).isoformat()
    since = new_job(partner, world, types=["Patient", "Encounter"], since=between)
    run_all(since)
    assert since.counts == {"Encounter": 2}

    until = new_job(partner, world, types=["Patient", "Encounter", "Provenance"], until=between)
    run_all(until)
    assert until.counts == {"Patient": 2, "Provenance": 2}  # one transmitter Provenance a chunk


@pytest.fixture
def planner_nudges(monkeypatch) -> list[str]:
    """Record the planning nudges instead of sending them to the broker (no worker runs in these tests)."""
    sent: list[str] = []
    real = engine.nudge

    def record(task: str, *args, **kwargs) -> None:
        if task == EXPORT.plan_task:
            sent.extend(args)
        else:
            real(task, *args, **kwargs)

    monkeypatch.setattr(engine, "nudge", record)
    return sent


def test_rerun_runs_a_failed_job_again_in_place(partner, world, monkeypatch, planner_nudges):
    from exports import writer

    job = new_job(partner, world)
    healthy = writer.write_chunk
    monkeypatch.setattr(writer, "write_chunk", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    chunk_id = jobs.plan(job.id)[0]
    for _ in range(3):
        jobs.run_chunk(chunk_id)
        ExportChunk.objects.filter(pk=chunk_id).update(not_before=None)  # skip the back-off
    job.refresh_from_db()
    assert job.status == ExportJob.Status.FAILED

    monkeypatch.setattr(writer, "write_chunk", healthy)
    assert jobs.rerun(job.id) is True
    job.refresh_from_db()
    assert job.status == ExportJob.Status.QUEUED and job.error is None and not job.chunks.exists()
    assert jobs.rerun(job.id) is False  # queued again: nothing to re-run
    assert planner_nudges == [str(job.id)]
    run_all(job)
    assert job.status == ExportJob.Status.COMPLETED
    assert_p2p_export(exported_lines(job), world)
    # The planning note (one member excluded) appears once, not once per run.
    [note] = job.planning_messages
    assert "1 member(s) excluded" in note["diagnostics"]
    assert AuditEvent.objects.filter(action="export-rerun", partner=partner).count() == 1


def test_rerun_leaves_running_and_cancelled_jobs_alone(partner, world):
    running = new_job(partner, world, types=["Patient"])
    jobs.plan(running.id)
    assert jobs.rerun(running.id) is False
    asyncstatus.cancel_job(running)
    assert jobs.rerun(running.id) is False
    running.refresh_from_db()
    assert running.status == ExportJob.Status.CANCELLED


def test_admin_rerun_action(admin_client, partner, world, planner_nudges):
    job = new_job(partner, world, types=["Patient"])
    run_all(job)
    assert job.status == ExportJob.Status.COMPLETED and OutputFile.objects.filter(job_id=job.id).exists()
    response = admin_client.post("/admin/exports/exportjob/",
                                 {"action": "rerun_jobs", "_selected_action": [str(job.pk)]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == ExportJob.Status.QUEUED and planner_nudges == [str(job.id)]
    assert not OutputFile.objects.filter(job_id=job.id).exists()

