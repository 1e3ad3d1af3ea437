"""The job engine under real workers: a killed match worker, a frozen export worker behind a backlog.

Both kinds of job run on one engine (pdex.jobs.engine): units of work are leased, a lease that stops being
renewed expires, and the next claim — any worker's next message, or the sweep's nudge — takes the unit over.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from django.conf import settings
from django.utils import timezone

from exports import jobs
from exports.models import ExportChunk, ExportJob
from exports.params import JobParams
from exports.rules import export_window
from matching.models import MatchBatch, MatchEntry, MatchJob, MemberMatchGroup
from pdex.jobs.tasks import sweep_stale_work
from pdex.models import Member
from tests.builders import consent_for, consent_resource, days_ago, encounter, make_member, match_group, store

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NPI = "http://hl7.org/fhir/sid/us-npi"
MB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
REQUESTER_NPI = "1888888888"


def wait_until(predicate, what: str, *, seconds: float = 120, every: float = 0.05, sweep: bool = False) -> float:
    """Poll until `predicate()`; returns the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if predicate():
            return time.monotonic() - began
        if sweep:
            sweep_stale_work()  # what beat does every JOB_SWEEP_SECONDS
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def member_bundle(k: int) -> dict:
    """Member k as the new plan sends it: our card number, demographics and a #sensitive consent for it."""
    patient = {"resourceType": "Patient", "id": f"p{k}", "name": [{"family": f"Family{k}", "given": ["Given"]}],
               "gender": "female", "birthDate": "1970-01-01"}
    coverage = {"resourceType": "Coverage", "id": f"c{k}", "status": "active",
                "identifier": [{"type": MB, "system": settings.MEMBER_ID_SYSTEM, "value": f"MB{k:06d}"}],
                "beneficiary": {"reference": f"Patient/p{k}"},
                "payor": [{"identifier": {"system": NPI, "value": settings.PAYER_NPI}}]}
    consent = consent_resource(f"p{k}", REQUESTER_NPI, policy="sensitive")
    return {"name": "MemberBundle", "part": [{"name": "MemberPatient", "resource": patient},
                                             {"name": "CoverageToMatch", "resource": coverage},
                                             {"name": "Consent", "resource": consent}]}


def test_a_sigkilled_match_worker_loses_and_duplicates_no_entry(make_partner, api_for, celery_worker_process,
                                                                 settings):
    members, strangers = 1500, 100
    settings.MEMBER_MATCH_MAX_FAILURES = members + strangers  # the whole request fits the failure budget
    settings.JOB_LEASE_SECONDS = 3  # the sweep below runs here, in the test, with the workers' lease
    Member.objects.bulk_create([
        Member(fhir_id=f"m{k}", umb=f"UMB-{k}", member_number=f"MB{k:06d}", family=f"family{k}", given="given",
               birth_date="1970-01-01", gender="female") for k in range(members)])
    partner = make_partner("New Plan", npi=REQUESTER_NPI)
    body = {"resourceType": "Parameters", "parameter": [member_bundle(k) for k in range(members + strangers)]}
    env = {"MATCH_BATCH_SIZE": "10", "JOB_LEASE_SECONDS": "3"}
    worker = celery_worker_process(extra_env=env)
    response = api_for(partner).post("/fhir/Group/$bulk-member-match", data=json.dumps(body),
                        content_type="application/fhir+json", HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    job = MatchJob.objects.get(partner=partner)

    def batch_running() -> bool:
        return MatchBatch.objects.filter(job=job, status=MatchBatch.Status.RUNNING).exists()

    interrupted = False
    for _ in range(200):  # stop the pool while it holds a batch, so the kill lands mid-batch for certain
        wait_until(batch_running, "a batch to be running", every=0.005)
        children = worker.child_pids()
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        interrupted = batch_running()
        if interrupted:
            break
        for pid in children:
            os.kill(pid, signal.SIGCONT)
    assert interrupted, "the worker never held a batch while it was stopped"
    kill([*worker.child_pids(), worker.process.pid])  # the whole worker: its reserved messages are lost too
    worker.process.wait()
    job.refresh_from_db()
    assert job.status == MatchJob.Status.RUNNING and job.progress_done < job.progress_total

    celery_worker_process(extra_env=env)
    wait_until(lambda: MatchJob.objects.get(pk=job.pk).status == MatchJob.Status.COMPLETED,
               "the match to complete after recovery", sweep=True, every=0.5)
    job.refresh_from_db()
    assert MatchBatch.objects.filter(job=job, attempts__gt=1).exists(), "no batch was interrupted"
    entries = MatchEntry.objects.filter(job=job)
    assert entries.count() == members + strangers and not entries.filter(outcome="pending").exists()
    assert (job.progress_done, job.matched, job.no_match) == (members + strangers, members, strangers)
    assert job.consent_constrained == 0
    group = MemberMatchGroup.objects.get(job=job, code=MemberMatchGroup.Code.MATCH)
    assert group.members.count() == members and group.resource["quantity"] == members
    assert partner.consents.count() == members


def test_a_frozen_export_worker_behind_a_backlog_is_taken_over_within_lease_and_two_sweeps(
        partner, celery_worker_process, settings, tmp_path):
    lease, sweep_every = 4, 2
    settings.JOB_LEASE_SECONDS = lease
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_CHUNK_MEMBERS = 1
    members = []
    for k in range(300):
        member = make_member(f"bk{k}")
        store(encounter(f"bk{k}-enc", member.fhir_id, days_ago(20)), member)
        consent_for(member, partner)
        members.append(member)
    group = match_group(partner, members)
    env = {"JOB_LEASE_SECONDS": str(lease), "JOB_SWEEP_SECONDS": str(sweep_every), "EXPORT_CHUNK_MEMBERS": "1",
           "EXPORT_STORAGE_URL": settings.EXPORT_STORAGE_URL}
    celery_worker_process(extra_env=env, concurrency=1, kinds="maintenance,control", beat=True)
    frozen = celery_worker_process(extra_env=env, concurrency=1, kinds="export")
    celery_worker_process(extra_env=env, concurrency=1, kinds="export")
    job = jobs.start_export(partner=partner, kind=ExportJob.Kind.DAVINCI, group=group, request_url="x",
                            params=JobParams(window=export_window(request_time=timezone.now())))
    wait_until(lambda: ExportChunk.objects.filter(job=job).count() == 600, "the plan")

    [child] = frozen.child_pids()
    held = None
    try:
        for _ in range(200):  # freeze the worker while it holds a chunk's lease
            os.kill(child, signal.SIGSTOP)
            held = ExportChunk.objects.filter(job=job, status=ExportChunk.Status.RUNNING,
                                              lease_owner__startswith=frozen.name).first()
            if held is not None:
                break
            os.kill(child, signal.SIGCONT)
            time.sleep(0.01)
        assert held is not None, "the worker never held a lease while it was stopped"
        frozen_at = time.monotonic()
        backlog = ExportChunk.objects.filter(job=job, status=ExportChunk.Status.PENDING).count()
        taken_over = wait_until(lambda: ExportChunk.objects.get(pk=held.pk).lease_owner != held.lease_owner,
                                "the frozen worker's chunk to be taken over", seconds=60)
        assert backlog > 100, "no backlog behind the frozen chunk"
        assert taken_over <= lease + 2 * sweep_every + 1, f"taken over after {taken_over:.1f} s"
        assert time.monotonic() - frozen_at <= lease + 2 * sweep_every + 1
        wait_until(lambda: ExportJob.objects.get(pk=job.pk).status == ExportJob.Status.COMPLETED,
                   "the export to complete", seconds=180, every=0.5)
        job.refresh_from_db()
        assert job.counts["Patient"] == 300 and job.counts["Encounter"] == 300
    finally:
        kill([child])
