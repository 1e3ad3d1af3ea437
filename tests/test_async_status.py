"""The shared asynchronous-status machinery (spec §7.3–7.5): progress, 429, manifest, failure, cancel, expiry."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.http import parse_http_date

from exports.models import ExportJob
from matching.models import MatchJob
from pdex.jobs import asyncstatus
from pdex.jobs.models import AsyncJob, OutputFile
from pdex.jobs.outputs import write_output_file
from pdex.jobs.storage import get_storage
from pdex.models import AuditEvent
from tests.builders import example as spec_example


@pytest.fixture(autouse=True)
def _file_storage(settings, tmp_path):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path / 'exports'}"
    settings.FHIR_BASE_URL = "https://old-payer.test/fhir"
    settings.STATUS_RETRY_AFTER_SECONDS = 60
    settings.EXPORT_PRESIGNED_MANIFEST = False


def make_export(partner, created_at=None, **fields) -> ExportJob:
    fields.setdefault("request_url", "https://old-payer.test/fhir/Group/g1/$davinci-data-export")
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, **fields)
    if created_at is not None:  # auto_now_add: set after the insert
        ExportJob.objects.filter(pk=job.pk).update(created_at=created_at)
        job.refresh_from_db()
    return job


def complete(job, files=(("Patient", [b'{"resourceType":"Patient","id":"p1"}']),), errors=()):
    for sequence, (resource_type, lines) in enumerate(files):
        write_output_file(partner=job.partner, job_id=job.id, resource_type=resource_type, lines=lines,
                          sequence=sequence)
    for sequence, lines in enumerate(errors):
        write_output_file(partner=job.partner, job_id=job.id, resource_type="OperationOutcome", lines=lines,
                          kind=OutputFile.Kind.ERROR, sequence=sequence)
    assert asyncstatus.mark_completed(job)
    return job


def status_path(job) -> str:
    return f"/fhir/bulkstatus/{job.id}"


def test_status_url_is_absolute_from_fhir_base_url(partner):
    job = make_export(partner)
    assert asyncstatus.status_url(job) == f"https://old-payer.test/fhir/bulkstatus/{job.id}"


def test_running_export_answers_202_with_progress_and_retry_after(api, partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=45, progress_total=100,
                      started_at=timezone.now() - timedelta(seconds=30),
                      created_at=timezone.now() - timedelta(seconds=40))
    response = api.get(status_path(job))
    assert response.status_code == 202
    assert response["X-Progress"] == "chunks 45/100"
    assert response["Retry-After"] == "19"  # 30 s for 45 chunks: 55 more take about 37 s; half of it
    job.refresh_from_db()
    assert job.last_polled_at is not None


def test_the_202_body_is_json_in_the_type_the_client_asked_for(api, partner):
    """An empty body served as application/json is not JSON (the Bulk Data tester parses it)."""
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=1, progress_total=4)
    response = api.get(status_path(job), HTTP_ACCEPT="application/json")
    assert response.status_code == 202 and response["Content-Type"].startswith("application/json")
    assert response.json()["issue"][0]["severity"] == "information"


def test_running_match_job_counts_members(api, partner):
    job = MatchJob.objects.create(partner=partner, request_url="https://old-payer.test/fhir/Group/$bulk-member-match",
                                  status=AsyncJob.Status.RUNNING, progress_done=300, progress_total=1000)
    response = api.get(status_path(job))
    assert response.status_code == 202
    assert response["X-Progress"] == "members 300/1000"


def test_queued_job_says_queued(api, partner):
    response = api.get(status_path(make_export(partner)))
    assert response.status_code == 202
    assert response["X-Progress"] == "queued"


def test_retry_after_is_the_estimated_time_left_between_1_s_and_the_cap(partner):
    now = timezone.now()
    young = make_export(partner)
    assert asyncstatus.retry_after(young, now=now) == 1  # a small export is done within a second or two
    assert asyncstatus.retry_after(young, now=now + timedelta(seconds=61)) == 60  # nothing done in a minute: cap
    almost = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=99, progress_total=100,
                         started_at=now - timedelta(seconds=10), created_at=now - timedelta(seconds=10))
    assert asyncstatus.retry_after(almost, now=now) == 1
    slow = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=1, progress_total=100,
                       started_at=now - timedelta(seconds=10), created_at=now - timedelta(seconds=10))
    assert asyncstatus.retry_after(slow, now=now) == 5  # 990 s left at this pace, but never over half its age
    old = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=1, progress_total=100,
                      started_at=now - timedelta(seconds=300), created_at=now - timedelta(seconds=300))
    assert asyncstatus.retry_after(old, now=now) == 60  # and never over the cap
    finishing = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=100, progress_total=100,
                            started_at=now - timedelta(seconds=300), created_at=now - timedelta(seconds=300))
    assert asyncstatus.retry_after(finishing, now=now) == 1  # every unit done: the manifest is moments away
    halfway = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=5, progress_total=10,
                          started_at=now - timedelta(seconds=8), created_at=now - timedelta(seconds=8))
    assert asyncstatus.retry_after(halfway, now=now) == 4  # 8 s left at this pace: poll at half of it


def test_the_kick_off_tells_a_young_job_to_poll_after_1_s(partner):
    from exports.operations.kickoff import accepted

    assert accepted(make_export(partner))["Retry-After"] == "1"


def test_a_job_is_finishing_soon_when_its_finish_is_under_way_or_its_pace_leaves_under_the_hold(partner, settings):
    settings.STATUS_HOLD_SECONDS = 1
    now = timezone.now()

    def running(done, total, **fields):
        return make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=done, progress_total=total,
                           **fields)

    assert asyncstatus.finishing_soon(running(4, 4, finalize_started_at=now), now=now)
    assert not asyncstatus.finishing_soon(running(4, 4, finalize_started_at=now - timedelta(minutes=5)), now=now)
    assert asyncstatus.finishing_soon(running(9, 10, started_at=now - timedelta(seconds=5)), now=now)  # 0.6 s left
    assert not asyncstatus.finishing_soon(running(5, 10, started_at=now - timedelta(seconds=5)), now=now)  # 5 s
    assert not asyncstatus.finishing_soon(make_export(partner), now=now)  # queued: nothing to go by
    settings.STATUS_HOLD_SECONDS = 0
    assert not asyncstatus.finishing_soon(running(4, 4, finalize_started_at=now), now=now)


@pytest.mark.django_db(transaction=True)
def test_a_poll_that_finds_its_job_finishing_is_answered_when_it_finishes(api, partner, settings):
    """Retry-After is whole seconds: without the hold this poll would say 202 and "1 s", for a manifest ready
    0.3 s later."""
    import threading

    from django.db import connection

    settings.STATUS_HOLD_SECONDS = 5
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=4, progress_total=4,
                      started_at=timezone.now(), finalize_started_at=timezone.now())

    def finish_later():
        try:
            threading.Event().wait(0.3)
            complete(ExportJob.objects.get(pk=job.pk))
        finally:
            connection.close()

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    response = api.get(status_path(job))
    finisher.join()
    assert response.status_code == 200, response.content
    assert [item["type"] for item in response.json()["output"]] == ["Patient"]


def test_a_held_poll_that_outlasts_the_hold_answers_202_as_it_stands(api, partner, settings):
    settings.STATUS_HOLD_SECONDS = 0.2
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=4, progress_total=4,
                      started_at=timezone.now(), finalize_started_at=timezone.now())
    response = api.get(status_path(job))
    assert response.status_code == 202 and response["Retry-After"] == "1"
    assert response["X-Progress"] == "chunks 4/4"


def test_held_polls_never_take_more_places_than_status_holds(partner, settings, monkeypatch):
    settings.STATUS_HOLDS = 1
    settings.STATUS_HOLD_SECONDS = 5
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=4, progress_total=4,
                      finalize_started_at=timezone.now())
    naps: list[float] = []
    monkeypatch.setattr(asyncstatus.time, "sleep", naps.append)
    place = asyncstatus._holds(1)
    assert place.acquire(blocking=False)  # another poll of this process holds the only place
    try:
        assert asyncstatus.await_finish(job) is False and naps == []  # answered at once, not held
    finally:
        place.release()
    ExportJob.objects.filter(pk=job.pk).update(status=AsyncJob.Status.COMPLETED)
    assert asyncstatus.await_finish(job) is True and len(naps) == 1  # a place free: held until it is done


def test_polling_faster_than_half_retry_after_is_429(api, partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING, last_polled_at=timezone.now())
    response = api.get(status_path(job))
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "throttled"


def test_claim_poll_allows_a_poll_after_half_retry_after(partner):
    now = timezone.now()
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    assert asyncstatus.claim_poll(job, now=now)
    # Half the shortest Retry-After we give (1 s): a client told 1 s is never refused, whatever the cap.
    assert not asyncstatus.claim_poll(job, now=now + timedelta(seconds=0.4))
    assert asyncstatus.claim_poll(job, now=now + timedelta(seconds=0.5))


def test_retry_after_zero_never_throttles(settings, partner):
    settings.STATUS_RETRY_AFTER_SECONDS = 0
    now = timezone.now()
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    assert asyncstatus.claim_poll(job, now=now)
    assert asyncstatus.claim_poll(job, now=now)


def test_completed_export_answers_manifest_like_the_spec_example(api, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING),
                   files=[("Patient", [b'{"resourceType":"Patient","id":"a"}', b'{"resourceType":"Patient","id":"b"}']),
                          ("Coverage", [b'{"resourceType":"Coverage","id":"c"}'])],
                   errors=[[b'{"resourceType":"OperationOutcome","issue":[]}']])
    job.last_polled_at = timezone.now()
    job.save()  # a fast poll of a finished job still gets its manifest
    response = api.get(status_path(job), HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert abs(parse_http_date(response["Expires"]) - job.expires_at.timestamp()) < 1
    manifest = json.loads(response.content)
    example = spec_example("davinci-data-export-complete-manifest.json")
    assert set(manifest) == set(example)
    assert manifest["request"] == job.request_url
    assert manifest["requiresAccessToken"] is True
    assert manifest["transactionTime"].endswith("Z")
    assert [(item["type"], item["count"]) for item in manifest["output"]] == [("Patient", 2), ("Coverage", 1)]
    assert [(item["type"], item["count"]) for item in manifest["error"]] == [("OperationOutcome", 1)]
    for item in manifest["output"] + manifest["error"]:
        assert set(item) == set(example["output"][0])
        assert item["url"].startswith("https://old-payer.test/fhir/bulkfiles/")
    assert "deleted" not in manifest


def test_completed_match_job_manifest_matches_the_bulk_member_match_example(api, partner):
    job = MatchJob.objects.create(partner=partner, request_url="https://old-payer.test/fhir/Group/$bulk-member-match")
    complete(job, files=[("Group", [b'{"resourceType":"Group"}'] * 3),
                         ("Parameters", [b'{"resourceType":"Parameters"}'])])
    manifest = api.get(status_path(job)).json()
    example = spec_example("bulk-member-match-complete-manifest.json")
    assert set(manifest) == set(example)
    assert [(i["type"], i["count"]) for i in manifest["output"]] == [(i["type"], i["count"]) for i in example["output"]]
    assert manifest["error"] == []


def test_empty_export_manifest_has_empty_arrays(api, partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    asyncstatus.mark_completed(job)
    manifest = api.get(status_path(job)).json()
    assert manifest["output"] == [] and manifest["error"] == []


def test_deleted_files_are_listed_when_present(partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    write_output_file(partner=partner, job_id=job.id, resource_type="Bundle", lines=[b'{"resourceType":"Bundle"}'],
                      kind=OutputFile.Kind.DELETED)
    manifest = asyncstatus.build_manifest(job)
    assert [item["type"] for item in manifest["deleted"]] == ["Bundle"]


def test_failed_job_answers_its_outcome_with_status_from_the_issue_code(api, partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "processing", "diagnostics": "chunks kept failing"}]}
    asyncstatus.mark_failed(job, outcome)
    response = api.get(status_path(job))
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/fhir+json")
    assert response.json() == outcome


@pytest.mark.parametrize(("code", "status"), [("invalid", 400), ("not-found", 404), ("transient", 503),
                                              ("exception", 500), ("made-up", 500)])
def test_failure_status_follows_the_issue_code(code, status):
    assert asyncstatus.failure_status({"issue": [{"code": code}]}) == status
    assert asyncstatus.failure_status(None) == 500


def test_unknown_job_is_404_operation_outcome(api):
    response = api.get("/fhir/bulkstatus/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_status_needs_a_token(client, partner):
    response = client.get(status_path(make_export(partner)))
    assert response.status_code == 401


def test_another_partners_token_gets_404_on_status_and_cancel(api_for, make_partner, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    stranger = api_for(make_partner("Other Plan"))
    assert stranger.get(status_path(job)).status_code == 404
    assert stranger.delete(status_path(job)).status_code == 404
    job.refresh_from_db()
    assert job.status == AsyncJob.Status.COMPLETED
    assert OutputFile.objects.filter(job_id=job.id).count() == 1
    refusal = AuditEvent.objects.get(action="bulk-cancel")
    assert refusal.outcome == AuditEvent.Outcome.MINOR_FAILURE and refusal.partner.name == "Other Plan"


def test_cancel_running_job_is_202_then_404_and_files_gone(api, partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING, progress_total=4)
    output = write_output_file(partner=partner, job_id=job.id, resource_type="Patient", lines=[b"{}"])
    assert get_storage().exists(output.storage_key)
    response = api.delete(status_path(job))
    assert response.status_code == 202
    assert response.json()["resourceType"] == "OperationOutcome"
    job.refresh_from_db()
    assert job.status == AsyncJob.Status.CANCELLED
    assert not get_storage().exists(output.storage_key)
    assert not OutputFile.objects.filter(job_id=job.id).exists()
    assert api.get(status_path(job)).status_code == 404
    assert api.delete(status_path(job)).status_code == 404
    event = AuditEvent.objects.get(action="bulk-cancel", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.partner == partner and str(job.id) in event.entity


def test_delete_after_completion_means_client_done(api, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    key = OutputFile.objects.get(job_id=job.id).storage_key
    assert api.delete(status_path(job)).status_code == 202
    assert not get_storage().exists(key)
    assert api.get(status_path(job)).status_code == 404
    assert AuditEvent.objects.get(action="bulk-cancel").reason == "client done"


def test_late_finish_does_not_overwrite_a_cancel(partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    assert asyncstatus.cancel_job(job)
    assert not asyncstatus.mark_completed(job)
    assert not asyncstatus.mark_failed(job, {"resourceType": "OperationOutcome", "issue": []})
    job.refresh_from_db()
    assert job.status == AsyncJob.Status.CANCELLED


def test_mark_running_sets_transaction_time_once(partner):
    job = make_export(partner)
    assert asyncstatus.mark_running(job)
    assert job.status == AsyncJob.Status.RUNNING and job.transaction_time is not None
    assert not asyncstatus.mark_running(job)


def test_expired_job_answers_404(api, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get(status_path(job)).status_code == 404


def test_expire_outputs_removes_only_expired_files(partner):
    now = timezone.now()
    old = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    fresh = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    ExportJob.objects.filter(pk=old.pk).update(expires_at=now - timedelta(minutes=1))
    old_key = OutputFile.objects.get(job_id=old.id).storage_key
    fresh_key = OutputFile.objects.get(job_id=fresh.id).storage_key
    assert asyncstatus.expire_outputs(now=now) == 1
    assert not get_storage().exists(old_key)
    assert not OutputFile.objects.filter(job_id=old.id).exists()
    assert get_storage().exists(fresh_key)
    assert OutputFile.objects.filter(job_id=fresh.id).exists()
    assert asyncstatus.expire_outputs(now=now) == 0


def test_expire_outputs_sweeps_files_written_after_a_cancel(partner):
    job = make_export(partner, status=AsyncJob.Status.RUNNING)
    asyncstatus.cancel_job(job)
    late = write_output_file(partner=partner, job_id=job.id, resource_type="Patient", lines=[b"{}"])
    assert asyncstatus.expire_outputs() == 1
    assert not get_storage().exists(late.storage_key)


def test_expire_outputs_task_runs_the_sweep(partner):
    from pdex.jobs.tasks import expire_outputs

    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert expire_outputs.run() == 1
    assert not OutputFile.objects.filter(job_id=job.id).exists()


def test_beat_schedule_runs_expiry(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "pdex.expire_outputs" in tasks


def test_transient_lookup_problem_is_503_transient(partner, monkeypatch):
    from django.db import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("connection lost")

    monkeypatch.setattr(asyncstatus, "job_models", broken)
    with pytest.raises(asyncstatus.TransientError) as caught:
        asyncstatus.find_job("00000000-0000-4000-8000-000000000000", partner=partner)
    assert caught.value.status == 503
    assert caught.value.outcome()["issue"][0]["code"] == "transient"


def test_admin_shows_export_job_with_progress_counts_and_files(admin_client, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING, progress_done=3, progress_total=4,
                               counts={"Patient": 1}))
    job.chunks.create(sequence=0, resource_type="Patient", member_ids=[1, 2])
    listing = admin_client.get("/admin/exports/exportjob/")
    assert listing.status_code == 200 and "3/4 (75%)" in listing.content.decode()
    page = admin_client.get(f"/admin/exports/exportjob/{job.pk}/change/").content.decode()
    assert "Patient: 1" in page
    assert OutputFile.objects.get(job_id=job.id).storage_key.split("/")[-1].startswith("output-Patient")
    assert "output Patient #0" in page
    assert admin_client.get("/admin/pdex/outputfile/").status_code == 200


def test_admin_cancel_action_cancels_and_audits(admin_client, partner):
    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    asked = admin_client.post("/admin/exports/exportjob/",
                              {"action": "cancel_jobs", "_selected_action": [str(job.pk)]})
    assert asked.status_code == 200  # a confirmation page first, asking why
    job.refresh_from_db()
    assert job.status == AsyncJob.Status.COMPLETED
    response = admin_client.post("/admin/exports/exportjob/", {
        "action": "cancel_jobs", "confirmed": "yes", "reason": "sent to the wrong plan",
        "_selected_action": [str(job.pk)]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == AsyncJob.Status.CANCELLED
    assert not OutputFile.objects.filter(job_id=job.id).exists()
    assert AuditEvent.objects.get(action="bulk-cancel").reason == "cancelled by admin admin: sent to the wrong plan"


def test_database_failure_while_polling_is_503_transient(api, partner, monkeypatch):
    from django.db import OperationalError

    job = make_export(partner, status=AsyncJob.Status.RUNNING)

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(asyncstatus, "claim_poll", lost)
    response = api.get(status_path(job))
    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert response.json()["issue"][0]["code"] == "transient"


def test_expire_outputs_runs_on_a_real_worker(celery_worker_process, partner):
    import time

    from pdex.jobs.tasks import expire_outputs

    job = complete(make_export(partner, status=AsyncJob.Status.RUNNING))
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    key = OutputFile.objects.get(job_id=job.id).storage_key
    worker = celery_worker_process(concurrency=1)
    expire_outputs.delay()
    deadline = time.monotonic() + 60
    while OutputFile.objects.filter(job_id=job.id).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not OutputFile.objects.filter(job_id=job.id).exists(), worker.output()[-2000:]
    assert not get_storage().exists(key)
    assert AuditEvent.objects.filter(action="bulk-expire", entity__endswith=str(job.id)).exists()
