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
from itertools import groupby
from operator import itemgetter

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


# How many of the latest segments `line_bytes` reads: enough to have seen every type, bounded whatever the history.
RECENT_SEGMENTS = 5000


def line_bytes() -> dict[str, float]:
    """Bytes per line of each type in the latest export segments (any partner's): what the planner weighs a
    type's rows by when it shares small types out among chunks. Empty before the first export."""
    recent = ExportFilePart.objects.filter(count__gt=0).order_by("-id")[:RECENT_SEGMENTS]
    lines: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for resource_type, count, size in recent.values_list("resource_type", "count", "size"):
        lines[resource_type] = lines.get(resource_type, 0) + count
        sizes[resource_type] = sizes.get(resource_type, 0) + size
    return {resource_type: sizes[resource_type] / count for resource_type, count in lines.items()}


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
    """Join every type's segments into the job's files. Deterministic keys: a second run overwrites.

    The segments are read in one query, ordered by type and sequence (one per type was 20 round trips of a
    ×1 export's 60 ms finish)."""
    storage = get_storage()
    max_bytes = settings.EXPORT_FILE_MAX_BYTES
    files: list[OutputFile] = []
    placements: list[tuple[int, str, int]] = []
    rows = (ExportFilePart.objects.filter(job=job, size__gt=0).order_by("resource_type", "sequence")
            .values_list("resource_type", "id", "storage_key", "count", "size"))
    for resource_type, typed in groupby(rows.iterator(), key=itemgetter(0)):
        typed = list(typed)
        ids = {key: part_id for _, part_id, key, _, _ in typed}
        groups = planning.pack([planning.Segment(key, count, size) for _, _, key, count, size in typed], max_bytes)
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
    output files a previous finalize left that this one did not write (to delete).

    The segments are pointed at their files by one UPDATE from arrays: `bulk_update` wrote a CASE per row
    and column, thousands of them at ×100."""
    keys = [f.storage_key for f in published.files]
    stale = OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT).exclude(storage_key__any=keys)
    stale_keys = list(stale.values_list("storage_key", flat=True))
    if stale_keys:
        stale.delete()
    outputs.record(published.files)
    file_ids = dict(OutputFile.objects.filter(storage_key__any=keys).values_list("storage_key", "id"))
    if published.placements:
        part_ids, file_keys, offsets = zip(*published.placements, strict=True)
        with connection.cursor() as cursor:
            cursor.execute(
                'UPDATE exports_exportfilepart AS p SET output_file_id = v.file, "offset" = v.at'
                " FROM unnest(%s::bigint[], %s::uuid[], %s::bigint[]) AS v(id, file, at) WHERE p.id = v.id",
                [list(part_ids), [file_ids[key] for key in file_keys], list(offsets)])
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
