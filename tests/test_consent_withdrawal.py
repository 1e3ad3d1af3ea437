"""Once a member's consent ends, nothing more of theirs leaves: real HTTP, a real Celery worker, file storage.

A consent revoked while its export runs: the chunk that starts after it writes nothing of the member, the
files written before are no longer served, the job re-runs without the member under the same status URL, and
what the client downloads holds nothing of theirs; the error file counts the member, never names them. A
consent that ends after the export completed withdraws its files at the download (expiry) or at once
(revocation). docs/consent.md, "The guarantee".
"""

from __future__ import annotations

import json
import time

import pytest

from consent.models import Consent
from consent.services import revoke
from exports import jobs, withdrawal
from exports.models import ExportChunk, ExportJob
from pdex.jobs.models import OutputFile
from pdex.models import Member, Partner
from tests.builders import consent_for, days_ago, make_member, match_group
from tests.conftest import issue_token
from tests.export_world import World, member_data
from tests.test_export_e2e import WORKER_ENV, Client

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fhir_base(live_server, settings):
    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.STATUS_RETRY_AFTER_SECONDS = 1
    settings.EXPORT_CHUNK_MEMBERS = 1  # planned in this process too: one member per chunk, as the worker plans
    return settings.FHIR_BASE_URL


def members_world(partner: Partner, keys: tuple[str, ...]) -> World:
    members = {key: make_member(f"pt-{key}-{partner.pk}", umb=f"UMB-{key}-{partner.pk}") for key in keys}
    for member in members.values():
        consent_for(member, partner, via="bulk-member-match")
    world = World(group=match_group(partner, members.values()), members=members)
    for key, member in members.items():
        member_data(world, f"{key}{partner.pk}", member, visible=True)
    return world


def traces(member: Member, key: str, partner: Partner) -> tuple[str, ...]:
    """What would betray the member in a downloaded line: their Patient id, UMB and resource ids."""
    return (member.fhir_id, member.umb, f"{key}{partner.pk}-")


def assert_nothing_of(lines: list[bytes], *needles: str) -> None:
    for line in lines:
        text = line.decode()
        assert not any(needle in text for needle in needles), text[:300]


def assert_running_again(client: Client, status_url: str) -> None:
    """The status URL says 202 again: the job is being produced anew (asked while no worker runs)."""
    again = client.session.get(status_url, headers={"Accept": "application/json"}, timeout=30)
    assert again.status_code == 202, again.text


def wait_done(client: Client, status_url: str) -> dict:
    done = client.wait(status_url)
    assert done.status_code == 200, done.text
    return done.json()


def test_consent_revoked_while_the_export_runs(fhir_base, file_storage, partner, celery_worker_process):
    world = members_world(partner, ("gone", "kept"))
    gone, kept = world.members["gone"], world.members["kept"]
    client = Client(fhir_base, issue_token(partner))
    response = client.kick_off(f"Group/{world.group.pk}/$davinci-data-export")
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    job = ExportJob.objects.get(pk=status_url.rsplit("/", 1)[1])

    # The export runs (here, in this process, so the order is ours): one of the member's chunks is written...
    jobs.plan(job.pk)
    theirs = list(ExportChunk.objects.filter(job=job, member_ids=[gone.pk]).order_by("sequence"))
    assert len(theirs) >= 2
    assert jobs.run_chunk(theirs[0].pk).state == "done"
    assert ExportChunk.objects.get(pk=theirs[0].pk).count > 0  # their lines are written

    # ... then the member revokes. The next chunk of theirs that starts writes nothing of them.
    revoke(Consent.objects.get(member=gone, partner=partner), "member asked us to stop", actor="member line")
    assert jobs.run_chunk(theirs[1].pk).state == "done"
    after = ExportChunk.objects.get(pk=theirs[1].pk)
    assert after.withdrawn_member_ids == [gone.pk] and after.count == 0

    # A worker does the rest: the finalize finds the member in a chunk written before, withdraws the job and it
    # runs again without them, under the same status URL.
    celery_worker_process(extra_env=WORKER_ENV)
    manifest = wait_done(client, status_url)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED and job.withdrawn_members == 1 and job.member_count == 1
    for chunk in job.chunks.all():
        assert gone.pk not in chunk.member_ids  # the re-run planned without them
    for output in OutputFile.objects.filter(job_id=job.pk):
        assert gone.pk not in withdrawal.members_in_file(output)

    lines = client.download(manifest)
    assert_nothing_of(lines, *traces(gone, "gone", partner))
    assert any(kept.fhir_id in line.decode() for line in lines)
    errors = [json.loads(line) for line in client.download(manifest, "error")]
    texts = [issue["diagnostics"] for outcome in errors for issue in outcome["issue"]]
    assert any(text.startswith("1 member(s) withdrawn") for text in texts), texts
    assert_nothing_of([json.dumps(errors).encode()], *traces(gone, "gone", partner))


def test_consent_ending_after_the_export_withdraws_its_files(fhir_base, file_storage, partner,
                                                              celery_worker_process):
    world = members_world(partner, ("expires", "kept", "revokes"))
    expires, revokes = world.members["expires"], world.members["revokes"]
    worker = celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, issue_token(partner))
    response = client.kick_off(f"Group/{world.group.pk}/$davinci-data-export")
    status_url = response.headers["Content-Location"]
    manifest = client.wait(status_url).json()
    job = ExportJob.objects.get(pk=status_url.rsplit("/", 1)[1])
    worker.stop()  # so the client is sure to see the re-run (202) before a worker finishes it

    # The consent's period ends (nothing announces it): the download of a file holding the member is refused,
    # naming nobody, and the job runs again.
    Consent.objects.filter(member=expires, partner=partner).update(period_end=days_ago(1).date())
    holding = next(item for item in manifest["output"] if expires.pk in withdrawal.members_in_file(
        OutputFile.objects.get(pk=item["url"].rsplit("/", 1)[1])))
    refused = client.session.get(holding["url"], timeout=30)
    assert refused.status_code == 410 and refused.json()["resourceType"] == "OperationOutcome"
    assert_nothing_of([refused.content], *traces(expires, "expires", partner))
    assert_running_again(client, status_url)
    worker = celery_worker_process(extra_env=WORKER_ENV)
    manifest = wait_done(client, status_url)
    worker.stop()
    assert_nothing_of(client.download(manifest), *traces(expires, "expires", partner))

    # A revocation withdraws at once: the files go before anyone asks for them (presigned URLs never reach us).
    revoke(Consent.objects.get(member=revokes, partner=partner), "member phoned", actor="member line")
    job.refresh_from_db()
    assert job.status == ExportJob.Status.QUEUED
    assert not OutputFile.objects.filter(job_id=job.pk).exists()
    old = manifest["output"][0]["url"]
    assert client.session.get(old, timeout=30).status_code == 404
    time.sleep(1)  # Retry-After
    assert_running_again(client, status_url)
    celery_worker_process(extra_env=WORKER_ENV)
    manifest = wait_done(client, status_url)
    lines = client.download(manifest)
    assert_nothing_of(lines, *traces(expires, "expires", partner), *traces(revokes, "revokes", partner))
    assert any(world.members["kept"].fhir_id in line.decode() for line in lines)
    job.refresh_from_db()
    assert job.withdrawn_members == 2
    errors = [json.loads(line) for line in client.download(manifest, "error")]
    assert any("2 member(s) withdrawn" in issue["diagnostics"] for e in errors for issue in e["issue"])
