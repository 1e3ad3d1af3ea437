"""Output storage: file storage (atomic, confined to its folder) and S3 through moto (multipart, SSE, presign)."""

from __future__ import annotations

import os

import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from moto import mock_aws

from pdex.jobs import storage as storage_module
from pdex.jobs.models import OutputFile
from pdex.jobs.outputs import job_prefix, output_key, write_output_file
from pdex.jobs.storage import FileStorage, S3Storage, storage_from_url

BUCKET = "pdex-exports-test"


# --- file storage --------------------------------------------------------------------------------

def test_file_writer_commits_atomically(tmp_path):
    store = FileStorage(tmp_path)
    with store.writer("1/job/output-Patient-00000.ndjson") as handle:
        handle.write(b"line\n")
        assert not store.exists("1/job/output-Patient-00000.ndjson")  # nothing visible before commit
    assert b"".join(store.read("1/job/output-Patient-00000.ndjson")) == b"line\n"
    assert store.size("1/job/output-Patient-00000.ndjson") == 5


def test_file_writer_leaves_nothing_when_the_writer_fails(tmp_path):
    store = FileStorage(tmp_path)
    with pytest.raises(RuntimeError), store.writer("1/job/a.ndjson") as handle:
        handle.write(b"half")
        raise RuntimeError("worker died")
    assert not store.exists("1/job/a.ndjson")
    assert os.listdir(tmp_path / "1" / "job") == []


def test_file_keys_cannot_escape_the_root(tmp_path):
    store = FileStorage(tmp_path / "exports")
    with pytest.raises(ValueError):
        store.exists("../secrets")


def test_file_delete_prefix_removes_one_job_only(tmp_path):
    store = FileStorage(tmp_path)
    for key in ("1/a/x.ndjson", "1/a/y.ndjson", "1/b/x.ndjson"):
        with store.writer(key) as handle:
            handle.write(b"{}\n")
    store.delete_prefix("1/a/")
    assert not store.exists("1/a/x.ndjson") and not store.exists("1/a/y.ndjson")
    assert store.exists("1/b/x.ndjson")
    store.delete_prefix("1/b/x.ndjson")
    assert not store.exists("1/b/x.ndjson")
    store.delete_prefix("9/none/")  # nothing there: no error


def test_file_storage_has_no_presigned_urls(tmp_path):
    assert FileStorage(tmp_path).presigned_url("k", 60) is None


def test_storage_from_url():
    assert isinstance(storage_from_url("file:///tmp/x"), FileStorage)
    with pytest.raises(ValueError):
        storage_from_url("ftp://host/x")


def test_write_output_file_uses_deterministic_keys_and_reruns_overwrite(settings, tmp_path, partner):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}"
    job_id = "6f1c2d3e-1111-4222-8333-444455556666"
    first = write_output_file(partner=partner, job_id=job_id, resource_type="Patient", lines=[b"{}", b"{}"],
                              sequence=3)
    assert first.storage_key == f"{partner.pk}/{job_id}/output-Patient-00003.ndjson"
    assert first.storage_key == output_key(partner.pk, job_id, "output", "Patient", 3)
    assert first.storage_key.startswith(job_prefix(partner.pk, job_id))
    again = write_output_file(partner=partner, job_id=job_id, resource_type="Patient", lines=[b"{}"], sequence=3)
    assert again.pk == first.pk and again.count == 1 and again.size == 3
    assert OutputFile.objects.filter(job_id=job_id).count() == 1
    assert (tmp_path / first.storage_key).read_bytes() == b"{}\n"


# --- S3 (moto, in-process) -------------------------------------------------------------------------

@pytest.fixture
def s3(monkeypatch, settings):
    """An S3Storage on a moto bucket; the configured storage points at it too."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        settings.EXPORT_STORAGE_URL = f"s3://{BUCKET}/exports"
        settings.AWS_ENDPOINT_URL = None
        storage_module._cached.cache_clear()
        store = storage_module.get_storage()
        store.client.create_bucket(Bucket=BUCKET)
        yield store
        storage_module._cached.cache_clear()


def test_s3_writer_uses_multipart_and_server_side_encryption(s3):
    s3.transfer = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    line = b'{"resourceType":"Observation","id":"' + b"x" * 1000 + b'"}\n'
    body = line * (11 * 1024)  # about 11 MB: three parts
    with s3.writer("7/job/output-Observation-00000.ndjson") as handle:
        for start in range(0, len(body), 1024 * 1024):
            handle.write(body[start:start + 1024 * 1024])
    head = s3.client.head_object(Bucket=BUCKET, Key="exports/7/job/output-Observation-00000.ndjson")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/fhir+ndjson"
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    assert s3.size("7/job/output-Observation-00000.ndjson") == len(body)
    assert b"".join(s3.read("7/job/output-Observation-00000.ndjson")) == body


def test_s3_default_threshold_is_multipart_above_16mb(s3):
    assert s3.transfer.multipart_threshold == 16 * 1024 * 1024


def test_s3_small_file_is_encrypted_too(s3):
    with s3.writer("7/job/a.ndjson") as handle:
        handle.write(b"{}\n")
    assert s3.exists("7/job/a.ndjson")
    assert s3.client.head_object(Bucket=BUCKET, Key="exports/7/job/a.ndjson")["ServerSideEncryption"] == "AES256"


def test_s3_writer_uploads_nothing_when_the_writer_fails(s3):
    with pytest.raises(RuntimeError), s3.writer("7/job/a.ndjson") as handle:
        handle.write(b"half")
        raise RuntimeError("worker died")
    assert not s3.exists("7/job/a.ndjson")


def test_s3_presigned_url_downloads_the_object(s3):
    with s3.writer("7/job/a.ndjson") as handle:
        handle.write(b'{"resourceType":"Patient"}\n')
    url = s3.presigned_url("7/job/a.ndjson", 300)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    assert requests.get(url, timeout=10).content == b'{"resourceType":"Patient"}\n'


def test_s3_delete_prefix_removes_one_job_only(s3):
    for key in ("7/a/x.ndjson", "7/a/y.ndjson", "7/b/x.ndjson"):
        with s3.writer(key) as handle:
            handle.write(b"{}\n")
    s3.delete_prefix("7/a/")
    assert not s3.exists("7/a/x.ndjson") and not s3.exists("7/a/y.ndjson")
    assert s3.exists("7/b/x.ndjson")


def test_s3_check_fails_on_a_missing_bucket(s3):
    s3.check()
    with pytest.raises(ClientError):
        S3Storage("pdex-no-such-bucket").check()
