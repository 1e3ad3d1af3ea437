"""An export's files: chunk segments joined at finalize into one file per type per EXPORT_FILE_MAX_BYTES, on
disk (copy_file_range) and on S3 (multipart, UploadPartCopy); which members each published file holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from django.utils import timezone
from moto import mock_aws

from exports import files, jobs
from exports.models import ExportFilePart, ExportJob
from pdex.jobs import storage as storage_module
from pdex.jobs.models import OutputFile
from pdex.jobs.storage import S3_MIN_PART, FileStorage, get_storage
from tests.export_world import assert_p2p_export, build_world, exported_lines

pytestmark = pytest.mark.django_db(transaction=True)  # the chunk writer streams on a connection of its own
BUCKET = "pdex-join-test"


@pytest.fixture(autouse=True)
def _small_chunks(settings, tmp_path):
    from exports.writer import close_stream_connection

    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_CHUNK_MEMBERS = 1  # one member a chunk: every type is several segments
    yield
    close_stream_connection()


@pytest.fixture
def s3(monkeypatch, settings):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        settings.EXPORT_STORAGE_URL = f"s3://{BUCKET}/exports"
        settings.AWS_ENDPOINT_URL = None
        storage_module._cached.cache_clear()
        store = get_storage()
        store.client.create_bucket(Bucket=BUCKET)
        yield store
        storage_module._cached.cache_clear()


def run_export(partner, world) -> ExportJob:
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, group=world.group, params={},
                                   request_url="http://testserver/x", transaction_time=timezone.now())
    states = [jobs.run_chunk(chunk_id).state for chunk_id in jobs.plan(job.id)]
    assert "last" in states and jobs.finalize(job.id)
    job.refresh_from_db()
    return job


def test_chunks_are_joined_into_one_file_per_type_and_segments_go(partner, settings):
    world = build_world(partner)
    job = run_export(partner, world)
    outputs = OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT)
    per_type = Counter(outputs.values_list("resource_type", flat=True))
    assert per_type and set(per_type.values()) == {1}  # Provenance too: every chunk's transmitter in one file
    fed = Counter(ExportFilePart.objects.filter(job=job, chunk__isnull=False).values_list("output_file", flat=True))
    assert fed[OutputFile.objects.get(job_id=job.id, resource_type="Encounter").id] == 2  # two chunks, one file
    assert fed[OutputFile.objects.get(job_id=job.id, resource_type="Provenance").id] >= 4
    assert_p2p_export(exported_lines(job), world)
    root = settings.EXPORT_STORAGE_URL.removeprefix("file://")
    assert not list(Path(root).rglob("segment-*"))
    for output in outputs:
        parts = list(ExportFilePart.objects.filter(output_file=output).order_by("sequence"))
        assert sum(p.count for p in parts) == output.count
        assert [p.offset for p in parts] == [sum(q.size for q in parts[:n]) for n in range(len(parts))]


def test_line_bytes_are_what_recent_exports_wrote_per_line_of_each_type(partner):
    assert files.line_bytes() == {}  # before any export: the planner counts rows alike
    job = run_export(partner, build_world(partner))
    weights = files.line_bytes()
    for output in OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT):
        assert weights[output.resource_type] == pytest.approx(output.size / output.count)


def test_a_published_file_names_its_members_and_a_member_its_files(partner):
    world = build_world(partner)
    job = run_export(partner, world)
    sens, reg = world.members["sens"].pk, world.members["reg"].pk
    encounters = OutputFile.objects.get(job_id=job.id, resource_type="Encounter")
    assert files.file_members(encounters.id) == {sens, reg}
    organizations = OutputFile.objects.get(job_id=job.id, resource_type="Organization")
    assert files.file_members(organizations.id) == set()  # shared resources belong to no member
    held = {f.resource_type for f in files.files_holding([reg])}
    assert "Encounter" in held and "Organization" not in held
    assert not files.files_holding([world.members["outsider"].pk])


def test_files_never_pass_the_limit_and_stay_few(partner, settings):
    settings.EXPORT_FILE_MAX_BYTES = 1500
    world = build_world(partner)
    job = run_export(partner, world)
    for resource_type, size in job.sizes.items():
        outputs = OutputFile.objects.filter(job_id=job.id, resource_type=resource_type)
        assert all(o.size <= 1500 or o.count == 1 for o in outputs)
        assert outputs.count() <= 2 * (size // 1500 + 1)  # packed in order: at worst half full
    assert_p2p_export(exported_lines(job), world)


def test_file_storage_joins_without_copying_and_publishes_atomically(tmp_path):
    store = FileStorage(tmp_path)
    for n, data in enumerate([b"a\n", b"", b"bc\nd\n"]):
        with store.writer(f"1/j/segments/s{n}") as out:
            out.write(data)
    joined, single = "1/j/output-X-00000.ndjson", "1/j/output-Z-00000.ndjson"
    assert store.join([f"1/j/segments/s{n}" for n in range(3)], joined) == 7
    assert store.join(["1/j/segments/s2"], single) == 5
    segment_inode = (tmp_path / "1/j/segments/s2").stat().st_ino
    assert (tmp_path / single).stat().st_ino == segment_inode  # a hard link: no byte was copied
    assert store.open_local(single) is not None and store.open_local(joined) is None  # sendfile for one part
    store.delete_prefix("1/j/segments/")  # the finish removes the segments: the published files keep the data
    assert b"".join(store.read(joined)) == b"a\nbc\nd\n" and store.size(joined) == 7
    assert b"".join(store.read(single)) == b"bc\nd\n" and store.exists(joined)

    for n, data in enumerate([b"new\n", b"er\n"]):  # a finish that runs again replaces what the first one joined
        with store.writer(f"1/j/segments/s{n}") as out:
            out.write(data)
    assert store.join(["1/j/segments/s0"], joined) == 4 and b"".join(store.read(joined)) == b"new\n"
    assert store.join(["1/j/segments/s0", "1/j/segments/s1"], single) == 7
    assert b"".join(store.read(single)) == b"new\ner\n"
    assert not [p for p in (tmp_path / "1/j").iterdir() if p.name.startswith(".")]  # nothing left aside

    with pytest.raises(FileNotFoundError):
        store.join(["1/j/segments/s0", "1/j/segments/missing"], "1/j/output-Y-00000.ndjson")
    assert not store.exists("1/j/output-Y-00000.ndjson")  # a failed join publishes nothing
    store.delete_prefix("1/j/")
    assert not (tmp_path / "1/j").exists()


def test_s3_join_copies_big_segments_in_s3_and_gathers_small_ones(s3):
    big = b"x" * (S3_MIN_PART + 10) + b"\n"
    segments = {"small-0": b"a\n", "big-1": big, "small-2": b"b\n" * 3, "big-3": big, "small-4": b"c\n"}
    for key, data in segments.items():
        with s3.writer(f"1/j/segments/{key}") as out:
            out.write(data)
    order = ["big-1", "small-0", "big-3", "small-2", "small-4"]  # a big one first (copied), one after a small one
    size = s3.join([f"1/j/segments/{k}" for k in order], "1/j/output-X-00000.ndjson")
    expected = b"".join(segments[k] for k in order)
    assert size == len(expected) and b"".join(s3.read("1/j/output-X-00000.ndjson")) == expected
    head = s3.client.head_object(Bucket=BUCKET, Key="exports/1/j/output-X-00000.ndjson")
    assert head["ServerSideEncryption"] == "AES256"
    assert s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_an_export_on_s3_publishes_joined_files(partner, s3):
    world = build_world(partner)
    job = run_export(partner, world)
    assert_p2p_export(exported_lines(job), world)
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and not [k for k in keys if "/segments/" in k]
