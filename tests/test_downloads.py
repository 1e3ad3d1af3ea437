"""Manifest file downloads: token + owner checks, exact bytes, audit, signed and presigned URLs, S3 via moto."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from django.utils import timezone
from moto import mock_aws

from exports.models import ExportJob
from pdex.jobs import asyncstatus, signing
from pdex.jobs import storage as storage_module
from pdex.jobs.models import AsyncJob, OutputFile
from pdex.jobs.outputs import write_output_file
from pdex.models import AuditEvent

LINES = [b'{"resourceType":"Patient","id":"p1","name":[{"family":"\xc3\x96berg"}]}',
         b'{"resourceType":"Patient","id":"p2"}']
BYTES = b"".join(line + b"\n" for line in LINES)


@pytest.fixture(autouse=True)
def _settings(settings, tmp_path):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path / 'exports'}"
    settings.FHIR_BASE_URL = "http://testserver/fhir"
    settings.EXPORT_PRESIGNED_MANIFEST = False
    settings.EXPORT_PRESIGNED_URL_SECONDS = 300


def completed_export(partner) -> tuple[ExportJob, OutputFile]:
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.GROUP, status=AsyncJob.Status.RUNNING,
                                   request_url="http://testserver/fhir/Group/g/$export")
    output = write_output_file(partner=partner, job_id=job.id, resource_type="Patient", lines=LINES)
    asyncstatus.mark_completed(job)
    return job, output


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_manifest_url_streams_exactly_the_file_with_the_token(api, partner):
    job, output = completed_export(partner)
    url = api.get(f"/fhir/bulkstatus/{job.id}").json()["output"][0]["url"]
    response = api.get(path_of(url), HTTP_ACCEPT="application/fhir+ndjson")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+ndjson"
    assert int(response["Content-Length"]) == len(BYTES)
    assert body(response) == BYTES
    event = AuditEvent.objects.get(action="bulk-download")
    assert event.partner == partner and event.entity == f"OutputFile/{output.id}"
    assert event.detail["job"] == str(job.id) and event.detail["type"] == "Patient"


def test_download_needs_a_token(client, partner):
    _, output = completed_export(partner)
    assert client.get(f"/fhir/bulkfiles/{output.id}").status_code == 401


def test_another_partners_token_gets_404_on_files(api_for, make_partner, partner):
    _, output = completed_export(partner)
    response = api_for(make_partner("Other Plan")).get(f"/fhir/bulkfiles/{output.id}")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    refusal = AuditEvent.objects.get(action="bulk-download")
    assert refusal.outcome == AuditEvent.Outcome.MINOR_FAILURE
    assert refusal.partner.name == "Other Plan" and refusal.entity == f"OutputFile/{output.id}"


def test_files_of_unfinished_cancelled_or_expired_jobs_are_404(api, partner):
    job, output = completed_export(partner)
    ExportJob.objects.filter(pk=job.pk).update(status=AsyncJob.Status.RUNNING)
    assert api.get(f"/fhir/bulkfiles/{output.id}").status_code == 404
    ExportJob.objects.filter(pk=job.pk).update(status=AsyncJob.Status.COMPLETED,
                                               expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get(f"/fhir/bulkfiles/{output.id}").status_code == 404
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    assert api.get(f"/fhir/bulkfiles/{output.id}").status_code == 200
    assert api.delete(f"/fhir/bulkstatus/{job.id}").status_code == 202
    assert api.get(f"/fhir/bulkfiles/{output.id}").status_code == 404


def test_missing_object_is_404_not_a_broken_stream(api, partner):
    _, output = completed_export(partner)
    storage_module.get_storage().delete_prefix(output.storage_key)
    assert api.get(f"/fhir/bulkfiles/{output.id}").status_code == 404


# --- signed URLs (file storage) --------------------------------------------------------------------

def test_signature_verifies_only_its_file_and_expiry():
    now = timezone.now()
    expires, sig = signing.sign("file-a", expires_in=60, now=now)
    assert signing.verify("file-a", str(expires), sig, now=now)
    assert not signing.verify("file-b", expires, sig, now=now)
    assert not signing.verify("file-a", expires + 1, sig, now=now)
    assert not signing.verify("file-a", expires, sig, now=now + timedelta(seconds=61))
    assert not signing.verify("file-a", "soon", sig, now=now)
    assert not signing.verify("file-a", expires, None, now=now)


def test_presigned_manifest_with_file_storage_needs_no_token(settings, api, client, partner):
    settings.EXPORT_PRESIGNED_MANIFEST = True
    job, output = completed_export(partner)
    manifest = api.get(f"/fhir/bulkstatus/{job.id}").json()
    assert manifest["requiresAccessToken"] is False
    expires = manifest["extension"][asyncstatus.URL_EXPIRES_EXTENSION]
    assert expires.endswith("Z")
    url = manifest["output"][0]["url"]
    assert url.startswith(f"http://testserver/fhir/bulkfiles/{output.id}/signed?expires=")
    response = client.get(path_of(url))  # no Authorization header at all
    assert response.status_code == 200
    assert body(response) == BYTES
    assert AuditEvent.objects.get(action="bulk-download").detail["signed_url"] is True


def test_tampered_or_expired_signed_urls_are_404(settings, client, partner):
    _, output = completed_export(partner)
    expires, sig = signing.sign(output.id, expires_in=300)
    base = f"/fhir/bulkfiles/{output.id}/signed"
    assert client.get(f"{base}?expires={expires}&signature={sig}").status_code == 200
    assert client.get(f"{base}?expires={expires + 3600}&signature={sig}").status_code == 404
    assert client.get(f"{base}?expires={expires}&signature={'0' * 64}").status_code == 404
    old_expires, old_sig = signing.sign(output.id, expires_in=60, now=timezone.now() - timedelta(minutes=5))
    assert client.get(f"{base}?expires={old_expires}&signature={old_sig}").status_code == 404
    assert client.get(base).status_code == 404


def test_signed_url_stops_working_after_cancel(api, client, partner):
    job, output = completed_export(partner)
    expires, sig = signing.sign(output.id, expires_in=300)
    api.delete(f"/fhir/bulkstatus/{job.id}")
    assert client.get(f"/fhir/bulkfiles/{output.id}/signed?expires={expires}&signature={sig}").status_code == 404


# --- S3 (moto) -------------------------------------------------------------------------------------

@pytest.fixture
def s3_storage(monkeypatch, settings):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        settings.EXPORT_STORAGE_URL = "s3://pdex-downloads-test/p2p"
        settings.AWS_ENDPOINT_URL = None
        storage_module._cached.cache_clear()
        store = storage_module.get_storage()
        store.client.create_bucket(Bucket="pdex-downloads-test")
        yield store
        storage_module._cached.cache_clear()


def test_s3_file_streams_through_our_api_with_the_token(s3_storage, api, partner):
    job, output = completed_export(partner)
    assert s3_storage.exists(output.storage_key)
    url = api.get(f"/fhir/bulkstatus/{job.id}").json()["output"][0]["url"]
    response = api.get(path_of(url))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+ndjson"
    assert body(response) == BYTES


def test_s3_presigned_manifest_points_at_the_bucket(settings, s3_storage, api, partner):
    settings.EXPORT_PRESIGNED_MANIFEST = True
    job, _ = completed_export(partner)
    manifest = api.get(f"/fhir/bulkstatus/{job.id}").json()
    assert manifest["requiresAccessToken"] is False
    assert asyncstatus.URL_EXPIRES_EXTENSION in manifest["extension"]
    url = manifest["output"][0]["url"]
    assert "pdex-downloads-test" in url and "X-Amz-Expires=300" in url
    assert requests.get(url, timeout=10).content == BYTES


def test_s3_cancel_deletes_the_objects(s3_storage, api, partner):
    job, output = completed_export(partner)
    assert api.delete(f"/fhir/bulkstatus/{job.id}").status_code == 202
    assert not s3_storage.exists(output.storage_key)
    listed = s3_storage.client.list_objects_v2(Bucket="pdex-downloads-test", Prefix="p2p/")
    assert listed.get("KeyCount", 0) == 0


def test_s3_expiry_deletes_the_objects(s3_storage, partner):
    job, output = completed_export(partner)
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert asyncstatus.expire_outputs() == 1
    assert not s3_storage.exists(output.storage_key)


def test_s3_outage_while_downloading_is_503_transient(s3_storage, api, partner, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    _, output = completed_export(partner)

    def unreachable(*args, **kwargs):
        raise EndpointConnectionError(endpoint_url="https://s3.test")

    monkeypatch.setattr(s3_storage, "exists", unreachable)
    response = api.get(f"/fhir/bulkfiles/{output.id}")
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"


# --- over real HTTP --------------------------------------------------------------------------------

def test_poll_download_and_cancel_over_http(live_server, settings, partner):
    from tests.conftest import issue_token

    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.STATUS_RETRY_AFTER_SECONDS = 30
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, status=AsyncJob.Status.RUNNING,
                                   progress_done=1, progress_total=2, request_url="x")
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {issue_token(partner)}"
    status = asyncstatus.status_url(job)

    running = http.get(status, headers={"Accept": "application/json"}, timeout=10)
    assert (running.status_code, running.headers["X-Progress"], running.headers["Retry-After"]) == (202, "chunks 1/2",
                                                                                                    "1")  # young
    assert http.get(status, timeout=10).status_code == 429

    write_output_file(partner=partner, job_id=job.id, resource_type="Patient", lines=LINES)
    asyncstatus.mark_completed(job)
    done = http.get(status, timeout=10)
    assert done.status_code == 200 and "Expires" in done.headers
    url = done.json()["output"][0]["url"]
    assert url.startswith(live_server.url)
    with http.get(url, stream=True, timeout=10) as download:
        assert download.status_code == 200
        assert download.headers["Content-Type"] == "application/fhir+ndjson"
        assert b"".join(download.iter_content(7)) == BYTES

    assert http.delete(status, timeout=10).status_code == 202
    gone = http.get(status, timeout=10)
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
    assert http.get(url, timeout=10).status_code == 404


# --- S3 through moto's server, shared with a real worker process -------------------------------------

@pytest.fixture
def moto_server_storage(monkeypatch, settings):
    """S3 storage on a moto server (another process can reach it through AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    settings.EXPORT_STORAGE_URL = "s3://pdex-worker-test/p2p"
    settings.AWS_ENDPOINT_URL = endpoint
    storage_module._cached.cache_clear()
    store = storage_module.get_storage()
    store.client.create_bucket(Bucket="pdex-worker-test")
    yield store, aws_env
    storage_module._cached.cache_clear()
    server.stop()


def test_s3_files_download_and_expire_on_a_real_worker(moto_server_storage, celery_worker_process, api, partner):
    import time

    from pdex.jobs.tasks import expire_outputs

    store, aws_env = moto_server_storage
    job, output = completed_export(partner)
    assert store.client.head_object(Bucket="pdex-worker-test",
                                    Key=f"p2p/{output.storage_key}")["ServerSideEncryption"] == "AES256"
    assert body(api.get(f"/fhir/bulkfiles/{output.id}")) == BYTES

    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    worker = celery_worker_process(concurrency=1, extra_env=aws_env)
    expire_outputs.delay()
    deadline = time.monotonic() + 60
    while OutputFile.objects.filter(job_id=job.id).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not OutputFile.objects.filter(job_id=job.id).exists(), worker.output()[-2000:]
    assert store.client.list_objects_v2(Bucket="pdex-worker-test", Prefix="p2p/").get("KeyCount", 0) == 0


# --- scopes: status and files are protected like the kick-off (Bulk Data 2.0.0, Security Considerations) ----

MEMBER_MATCH_ONLY = "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"


def test_a_member_match_only_token_gets_403_on_the_status_url_and_on_a_file(api_for, partner):
    job, output = completed_export(partner)
    narrow = api_for(partner, MEMBER_MATCH_ONLY)
    for response in (narrow.get(f"/fhir/bulkstatus/{job.id}"), narrow.get(f"/fhir/bulkfiles/{output.id}"),
                     narrow.delete(f"/fhir/bulkstatus/{job.id}")):
        assert response.status_code == 403, response.content
        assert response.json()["issue"][0]["code"] == "forbidden"
    assert ExportJob.objects.get(pk=job.pk).status == AsyncJob.Status.COMPLETED  # the DELETE did nothing
    refusals = AuditEvent.objects.filter(outcome=AuditEvent.Outcome.MINOR_FAILURE)
    assert {e.action for e in refusals} == {"bulk-status", "bulk-download", "bulk-cancel"}
    assert all("token scopes do not cover the job" in e.reason for e in refusals)


def test_a_token_narrowed_to_observation_gets_403_on_a_patient_file(api_for, partner):
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.PATIENT, status=AsyncJob.Status.RUNNING,
                                   request_url="http://testserver/fhir/Patient/$export",
                                   params={"types": ["Patient", "Observation"]})
    patients = write_output_file(partner=partner, job_id=job.id, resource_type="Patient", lines=LINES)
    asyncstatus.mark_completed(job)
    response = api_for(partner, "system/Observation.rs").get(f"/fhir/bulkfiles/{patients.id}")
    assert response.status_code == 403
    both = api_for(partner, "system/Patient.rs system/Observation.rs")
    assert both.get(f"/fhir/bulkfiles/{patients.id}").status_code == 200


def test_another_partners_job_is_404_before_any_scope_is_looked_at(api_for, make_partner, partner):
    job, _ = completed_export(partner)
    other = make_partner("Other Plan")
    assert api_for(other, MEMBER_MATCH_ONLY).get(f"/fhir/bulkstatus/{job.id}").status_code == 404


def test_json_is_answered_as_application_json_when_the_client_asks(api, partner):
    """BDT and FHIR's generic-mime-type SHOULD: an OperationOutcome in the type the client accepts."""
    job, _ = completed_export(partner)
    assert api.delete(f"/fhir/bulkstatus/{job.id}", HTTP_ACCEPT="application/json")["Content-Type"].startswith(
        "application/json")
    gone = api.delete(f"/fhir/bulkstatus/{job.id}", HTTP_ACCEPT="application/json")
    assert gone.status_code == 404 and gone["Content-Type"].startswith("application/json")
    assert gone.json()["resourceType"] == "OperationOutcome"
    fhir = api.get(f"/fhir/bulkstatus/{job.id}", HTTP_ACCEPT="application/fhir+json")
    assert fhir.status_code == 404 and fhir["Content-Type"].startswith("application/fhir+json")


# --- gzip ------------------------------------------------------------------------------------------

def test_accept_encoding_gzip_is_read_as_rfc_9110_says():
    from pdex.jobs.outputs import accepts_gzip

    assert accepts_gzip("gzip") and accepts_gzip("br;q=1.0, gzip;q=0.8") and accepts_gzip("*")
    assert accepts_gzip("gzip, deflate") and accepts_gzip("x-gzip")
    assert not accepts_gzip(None) and not accepts_gzip("") and not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("*, gzip;q=0") and not accepts_gzip("gzip;q=x")


def big_lines(n: int) -> list[bytes]:
    return [b'{"resourceType":"Observation","id":"o%d","status":"final","code":{"coding":[{"system":'
            b'"http://loinc.org","code":"8867-4"}]},"valueQuantity":{"value":%d,"unit":"/min"}}' % (k, k % 97)
            for k in range(n)]


@pytest.mark.parametrize("where", ["file", "s3"])
def test_gzip_download_streams_the_same_lines_in_fewer_bytes(api, partner, where, request):
    import gzip as gzip_module

    if where == "s3":
        request.getfixturevalue("s3_storage")
    lines = big_lines(20_000)  # ~2.6 MB: several storage blocks, compressed as they are read
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.GROUP, status=AsyncJob.Status.RUNNING,
                                   request_url="http://testserver/fhir/Group/g/$export")
    output = write_output_file(partner=partner, job_id=job.id, resource_type="Observation", lines=lines)
    asyncstatus.mark_completed(job)
    response = api.get(f"/fhir/bulkfiles/{output.id}", HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    assert "Content-Length" not in response and "Accept-Encoding" in response["Vary"]
    pieces = list(response.streaming_content)
    assert len(pieces) > 2  # streamed block by block, never the whole file at once
    compressed = b"".join(pieces)
    assert gzip_module.decompress(compressed) == b"".join(line + b"\n" for line in lines)
    assert len(compressed) * 4 <= output.size
    plain = api.get(f"/fhir/bulkfiles/{output.id}")
    assert "Content-Encoding" not in plain and int(plain["Content-Length"]) == output.size
