"""Durability: a worker killed (SIGKILL) mid-export loses nothing and duplicates nothing.

The sample's 8 members are loaded with the ingest and multiplied with the payer data (synthesize_payer_data
--multiply 12: 96 members, as many as the full Synthea set, over 10,000 resources exported), all matched and
consented; the export runs on a real worker whose processes are killed while chunks are being written. The
leases of the killed chunks expire (EXPORT_LEASE_SECONDS is short here), the recovery sweep (the beat task,
run from the test) sends them again, a fresh worker finishes the job, and its files hold exactly what an
undisturbed export holds.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import psutil
import pytest

from exports import jobs
from exports.kind import EXPORT
from exports.models import ExportChunk, ExportJob
from pdex import ingest
from pdex.jobs import engine
from pdex.jobs.tasks import sweep_stale_work
from pdex.models import Member
from pdex.synthesize import synthesize
from tests.builders import SAMPLE, consent_for, make_member, match_group
from tests.conftest import issue_token
from tests.test_export_e2e import Client

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LEASE = "3"
# The worker plans the job, so it needs the chunk size too: small chunks make an export of hundreds of them.
WORKER_ENV = {"JOB_LEASE_SECONDS": LEASE, "EXPORT_CHUNK_MEMBERS": "5"}
DEADLINE_SECONDS = 240
COPIES = 12


@pytest.fixture
def many_members(partner):
    ingest.load_paths([SAMPLE], validate=False, workers=1, progress=False)
    synthesize(seed=42, multiply=COPIES)
    members = list(Member.objects.all())
    assert len(members) == 8 * COPIES
    for member in members:
        consent_for(member, partner, policy="sensitive", via="bulk-member-match")
    return match_group(partner, members)


@pytest.fixture
def fhir_base(live_server, settings, tmp_path):
    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.STATUS_RETRY_AFTER_SECONDS = 1
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_CHUNK_MEMBERS = 5
    settings.JOB_LEASE_SECONDS = int(LEASE)
    return settings.FHIR_BASE_URL


def kick_off(client: Client, group) -> ExportJob:
    response = client.kick_off(f"Group/{group.pk}/$davinci-data-export")
    assert response.status_code == 202, response.text
    return ExportJob.objects.get(pk=response.headers["Content-Location"].rsplit("/", 1)[1])


def wait_until(predicate, what: str, seconds: float = DEADLINE_SECONDS, sweep: bool = False,
               every: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
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


def resource_keys(lines: list[bytes]) -> Counter:
    """(type, id) of every line but the transmitter Provenance, whose ids belong to one job."""
    keys: Counter = Counter()
    for line in lines:
        resource = json.loads(line)
        if resource["resourceType"] == "Provenance":
            continue
        keys[(resource["resourceType"], resource["id"])] += 1
    return keys


def test_sigkilled_worker_loses_and_duplicates_nothing(fhir_base, partner, many_members, celery_worker_process):
    client = Client(fhir_base, issue_token(partner))
    worker = celery_worker_process(extra_env=WORKER_ENV)
    job = kick_off(client, many_members)

    def chunk_running() -> bool:
        return ExportChunk.objects.filter(job=job, status=ExportChunk.Status.RUNNING).exists()

    hits = 0
    for _ in range(3):  # kill the pool's processes while a chunk is being written, three times over
        wait_until(chunk_running, "a chunk to be running", seconds=60, every=0.01)
        kill(worker.child_pids())
        hits += 1
    # …and then the whole worker, master included: its reserved messages are never acknowledged.
    kill([*worker.child_pids(), worker.process.pid])
    worker.process.wait()
    job.refresh_from_db()
    assert job.status == ExportJob.Status.RUNNING and job.progress_done < job.progress_total

    celery_worker_process(extra_env=WORKER_ENV)
    wait_until(lambda: ExportJob.objects.get(pk=job.pk).status != ExportJob.Status.RUNNING,
               "the export to finish after recovery", sweep=True)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED, job.error
    retried = ExportChunk.objects.filter(job=job, attempts__gt=1).count()
    assert retried >= 1, "no chunk was interrupted mid-write"
    manifest = client.wait(jobs_status_url(job)).json()
    recovered = resource_keys(client.download(manifest))
    assert max(recovered.values()) == 1, "a resource was written twice"

    reference = kick_off(client, many_members)
    wait_until(lambda: ExportJob.objects.get(pk=reference.pk).status == ExportJob.Status.COMPLETED,
               "the undisturbed export")
    expected = resource_keys(client.download(client.wait(jobs_status_url(reference)).json()))
    assert recovered == expected
    assert sum(expected.values()) > 10000
    assert hits == 3 and not psutil.pid_exists(worker.process.pid)


def jobs_status_url(job: ExportJob) -> str:
    from pdex.jobs.asyncstatus import status_url

    return status_url(job)


def test_stalled_jobs_get_their_pending_chunks_sent_again(partner, settings):
    from datetime import timedelta

    from django.utils import timezone

    member = make_member("p1")  # with its Patient resource, so the export has a chunk
    consent_for(member, partner)
    group = match_group(partner, [member])
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, group=group, params={},
                                   request_url="x", transaction_time=timezone.now())
    chunk_ids = jobs.plan(job.id)
    assert chunk_ids
    assert engine.sweep(send=False).units == {}  # just planned: its messages are still on their way
    later = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    assert sorted(engine.sweep(now=later, send=False).units[EXPORT.job_model]) == sorted(chunk_ids)


def test_cancel_mid_export_stops_the_chunks_and_removes_every_file(fhir_base, settings, partner, many_members,
                                                                    celery_worker_process):
    from pdex.jobs.models import OutputFile
    from pdex.jobs.tasks import expire_outputs
    from pdex.models import AuditEvent

    client = Client(fhir_base, issue_token(partner))
    celery_worker_process(extra_env=WORKER_ENV)  # hundreds of chunks: the cancel lands while they are written
    job = kick_off(client, many_members)
    wait_until(lambda: ExportJob.objects.get(pk=job.pk).progress_done >= 3, "a few chunks to finish", seconds=120)
    status_url = jobs_status_url(job)
    assert client.session.delete(status_url, timeout=30).status_code == 202
    cancel = AuditEvent.objects.get(action="bulk-cancel", entity__endswith=str(job.pk))
    assert cancel.detail["previous_status"] == "running"
    assert client.session.get(status_url, timeout=30).status_code == 404
    wait_until(lambda: not ExportChunk.objects.filter(job=job, status=ExportChunk.Status.RUNNING,
                                                      lease_expires__gt=timezone_now()).exists(),
               "running chunks to stop", seconds=60)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.CANCELLED and job.progress_done < job.progress_total
    assert ExportChunk.objects.filter(job=job, status=ExportChunk.Status.PENDING).exists()  # never ran
    expire_outputs()  # the beat sweep: anything a chunk committed after the cancel goes too
    assert not OutputFile.objects.filter(job_id=job.id).exists()
    assert not list((settings_root(settings) / str(partner.pk) / str(job.id)).glob("*.ndjson"))


def timezone_now():
    from django.utils import timezone

    return timezone.now()


def settings_root(settings):
    from pathlib import Path

    return Path(settings.EXPORT_STORAGE_URL.removeprefix("file://"))
