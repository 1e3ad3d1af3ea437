"""An export's files: the segments chunks write, joined at finalize into few large published files.

Chunks write one segment per type (and one transmitter Provenance) under `{partner}/{job}/segments/`; finalize
packs each type's segments, in sequence order, into files of at most EXPORT_FILE_MAX_BYTES (a file and a
segment are only bigger when a single line is), joins them in storage (`Storage.join`: hard links on disk — no
byte copied —, a multipart upload with UploadPartCopy on S3) and records the `OutputFile` rows the manifest lists. Each
published file appears whole or not at all. `ExportFilePart` keeps which file holds which chunk's lines, so
the members of a published file can be asked for (`file_members`) after the segments are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from exports import planning
from exports.models import ExportFilePart, ExportJob
from exports.writer import SEGMENT_FOLDER
from pdex.jobs import outputs
from pdex.jobs.models import OutputFile
from pdex.jobs.storage import get_storage


def record_parts(job_id: uuid.UUID | str, parts: list[ExportFilePart], low: int, high: int) -> list[str]:
    """Upsert the segment rows of one unit of work (sequences low ≤ s < high) in one statement and drop the
    rows a previous, longer run of it left behind; returns the storage keys to delete."""
    ExportFilePart.objects.bulk_create(parts, update_conflicts=True, unique_fields=["storage_key"],
                                       update_fields=["job", "chunk", "resource_type", "sequence", "count", "size"])
    stale = ExportFilePart.objects.filter(job_id=job_id, sequence__gte=low, sequence__lt=high).exclude(
        storage_key__in=[p.storage_key for p in parts])
    keys = list(stale.values_list("storage_key", flat=True))
    if keys:
        stale.delete()
    return keys


def discard_parts(job_id: uuid.UUID | str, low: int, high: int) -> None:
    """A unit's segments, rows and objects, gone (its job was cancelled while it wrote)."""
    parts = ExportFilePart.objects.filter(job_id=job_id, sequence__gte=low, sequence__lt=high)
    storage = get_storage()
    for key in parts.values_list("storage_key", flat=True):
        storage.delete_prefix(key)
    parts.delete()


@dataclass(frozen=True)
class Published:
    """The files finalize published and where each segment landed (unsaved: recorded with the completion)."""

    files: list[OutputFile]
    placements: list[tuple[int, str, int]]  # (part id, the file's storage key, byte offset in it)


def publish(job: ExportJob) -> Published:
    """Join every type's segments into the job's files. Deterministic keys: a second run overwrites."""
    storage = get_storage()
    max_bytes = settings.EXPORT_FILE_MAX_BYTES
    files: list[OutputFile] = []
    placements: list[tuple[int, str, int]] = []
    types = (ExportFilePart.objects.filter(job=job, size__gt=0).order_by("resource_type")
             .values_list("resource_type", flat=True).distinct())
    for resource_type in list(types):
        rows = list(ExportFilePart.objects.filter(job=job, resource_type=resource_type, size__gt=0)
                    .order_by("sequence").values_list("id", "storage_key", "count", "size"))
        ids = {key: part_id for part_id, key, _, _ in rows}
        groups = planning.pack([planning.Segment(key, count, size) for _, key, count, size in rows], max_bytes)
        for number, group in enumerate(groups):
            key = outputs.output_key(job.partner_id, job.id, OutputFile.Kind.OUTPUT, resource_type, number)
            size = storage.join([segment.storage_key for segment in group], key)
            files.append(OutputFile(storage_key=key, job_id=job.id, partner_id=job.partner_id,
                                    kind=OutputFile.Kind.OUTPUT, resource_type=resource_type,
                                    count=sum(s.count for s in group), size=size, sequence=number))
            offset = 0
            for segment in group:
                placements.append((ids[segment.storage_key], key, offset))
                offset += segment.size
    return Published(files, placements)


def record_published(job: ExportJob, published: Published) -> list[str]:
    """The published files as the manifest's rows, each segment pointing at its file; returns the keys of
    output files a previous finalize left that this one did not write (to delete)."""
    keys = [f.storage_key for f in published.files]
    stale = OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT).exclude(storage_key__in=keys)
    stale_keys = list(stale.values_list("storage_key", flat=True))
    stale.delete()
    outputs.record(published.files)
    file_ids = dict(OutputFile.objects.filter(storage_key__in=keys).values_list("storage_key", "id"))
    parts = [ExportFilePart(id=part_id, output_file_id=file_ids[key], offset=offset)
             for part_id, key, offset in published.placements]
    ExportFilePart.objects.bulk_update(parts, ["output_file", "offset"], batch_size=1000)
    return stale_keys


def delete_segments(job: ExportJob) -> None:
    """The segments are in the published files now (or the job is gone): remove their folder."""
    get_storage().delete_prefix(outputs.job_prefix(job.partner_id, job.id) + SEGMENT_FOLDER)


def file_members(output_file_id: uuid.UUID | str) -> set[int]:
    """The members (`pdex_member.id`) whose lines a published export file may hold: the members of the chunks
    whose segments it joined. A superset at worst (a chunk's member may have had nothing of this type that
    passed the rules), never missing one. Shared-resource files (Organization, …) hold no member."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT m FROM exports_exportfilepart p JOIN exports_exportchunk c ON c.id = p.chunk_id,"
            " unnest(c.member_ids) AS m WHERE p.output_file_id = %s", [output_file_id])
        return {row[0] for row in cursor.fetchall()}


def files_holding(member_ids: Iterable[int]) -> list[OutputFile]:
    """The published export files that may hold any of these members (the reverse of `file_members`)."""
    return list(OutputFile.objects.filter(export_parts__chunk__member_ids__overlap=list(member_ids)).distinct())
