"""Streaming a chunk's rows from PostgreSQL straight into NDJSON files in storage.

The rows come out of a `COPY (SELECT …) TO STDOUT` on a connection of their own: PostgreSQL hands over each
resource's stored text (`export_text`: claims already non-financial) as it is, so nothing is parsed or
re-serialised in Python and memory does not grow with the export. The CSV format with control characters as
delimiter and quote turns COPY into a pass-through: JSONB text never contains a raw control character or a
newline (it escapes them), so a field is never quoted or escaped.

Each row carries its id and its references to shared resources next to the JSON, so the chunk can name its
rows in the transmitter Provenance and the export can add the Organizations, Practitioners and Locations they
reference, once each, at the end. docs/exports.md tells the whole pipeline.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from exports import planning, provenance, rules
from exports.models import ExportChunk, ExportFilePart, ExportJob
from pdex.jobs.outputs import NdjsonWriter

FIELD = b"\x02"
BLOCK_ROWS = 500
COPY_OPTIONS = "WITH (FORMAT csv, DELIMITER e'\\x02', QUOTE e'\\x01')"
# A heartbeat at most this often (and at least every third of the lease): often enough that a cancelled job
# stops its writers within a second, rare enough that a chunk's bookkeeping is a few statements, not one per
# couple of thousand rows.
HEARTBEAT_SECONDS = 1.0
PROVENANCE_TYPE = "Provenance"
# The namespace of the transmitter Provenance ids: the same chunk of the same job always gets the same id.
PROVENANCE_NAMESPACE = uuid.UUID("5b0d0c2e-6a55-4f0e-9d3c-2f4b6f1f0a11")
# Chunks write segments here; finalize joins them into the published files and removes the folder.
SEGMENT_FOLDER = "segments/"
SEGMENT_KIND = "segment"


@dataclass
class ChunkResult:
    """What writing one chunk produced, recorded on the chunk and summed into the job."""

    count: int = 0
    size: int = 0
    parts: int = 0
    refs: set[str] = field(default_factory=set)
    files: list[ExportFilePart] = field(default_factory=list)  # the segments written (unsaved rows)
    withdrawn: list[int] = field(default_factory=list)  # members left out: consent ended since planning


_stream: dict[str, Any] = {}


@contextmanager
def stream_connection() -> Iterator[Any]:
    """A connection of its own for COPY streams, so heartbeats use Django's connection meanwhile, with
    EXPORT_WORK_MEM for its sorts.

    Kept open for the life of the worker process (one connection per chunk would cost more than a small
    chunk's rows); a connection that broke mid-stream is closed and the next call opens a fresh one.
    """
    params = connection.get_connection_params()
    key = (os.getpid(), repr(sorted((k, str(v)) for k, v in params.items())))
    raw = _stream.get("conn") if _stream.get("key") == key else None
    if raw is None or raw.closed:
        close_stream_connection()
        raw = connection.get_new_connection(params)
        raw.autocommit = True
        # A chunk's rows are sorted in memory: at PostgreSQL's default 4 MB the sort of a large type's rows
        # spills to disk. No parallel workers: every worker process already streams a chunk of its own, and
        # gathering a chunk's rows from helper processes only added their start-up and a merge.
        raw.execute("SELECT set_config('work_mem', %s, false), set_config('max_parallel_workers_per_gather', '0',"
                    " false)", [settings.EXPORT_WORK_MEM])
        _stream.update(conn=raw, key=key)
    try:
        yield raw
    except BaseException:
        close_stream_connection()
        raise


def close_stream_connection() -> None:
    raw = _stream.pop("conn", None)
    _stream.pop("key", None)
    if raw is not None and not raw.closed:
        raw.close()


def copy_rows(sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """Rows of `sql` (its columns joined by FIELD, the NDJSON line last) as COPY delivers them, one per item,
    ending in a newline."""
    with stream_connection() as raw, raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT {COPY_OPTIONS}",
                                                                        params) as copy:
        for row in copy:
            yield bytes(row)


def chunk_sql(resource_type: str, member_ids: Sequence[int], context: rules.ExportContext) -> tuple[str, dict]:
    """The chunk's rows through the one set of export rules, in id order: (id, shared references, the source
    format ingest recorded, the NDJSON line). The formats come with the rows, so the transmitter Provenance
    needs no second look at them.

    Rows, not blocks joined in SQL: `string_agg … GROUP BY row_number() / 500` made PostgreSQL sort every row
    three more times (the window, the groups, each ordered aggregate) and cost more than the Python that
    groups the rows here (docs/exports.md, "Chunks").
    """
    rows = rules.selection(resource_type, member_ids, context)
    # Only our own SQL fragments are interpolated; every value is a bound parameter.
    sql = (
        "SELECT r.fhir_id, NULLIF(array_to_string(r.refs, ','), ''), NULLIF(r.source_format, ''),"
        f" {rules.body_sql(resource_type, elements=context.elements)} {rows.sql} ORDER BY r.id"
    )
    return sql, dict(rows.params)


@dataclass(frozen=True)
class Block:
    """Up to BLOCK_ROWS resources of a chunk as NDJSON `lines` (each ending with a newline), their ids, their
    references to shared resources and their source formats (both comma-joined, may be empty)."""

    ids: list[str]
    refs: bytes
    formats: bytes
    lines: bytes


def blocks(sql: str, params: dict[str, Any]) -> Iterator[Block]:
    """The chunk's rows, as chunk_sql selects them, gathered into blocks of BLOCK_ROWS: the writer, the
    Provenance targets and the heartbeat work per block, not per row."""
    ids: list[str] = []
    refs: list[bytes] = []
    formats: set[bytes] = set()
    lines: list[bytes] = []
    for row in copy_rows(sql, params):
        fhir_id, row_refs, source_format, line = row.split(FIELD, 3)
        ids.append(fhir_id.decode())
        if row_refs:
            refs.append(row_refs)
        if source_format:
            formats.add(source_format)
        lines.append(line)  # ends with the row's newline
        if len(lines) == BLOCK_ROWS:
            yield Block(ids, b",".join(refs), b",".join(sorted(formats)), b"".join(lines))
            ids, refs, formats, lines = [], [], set(), []
    if lines:
        yield Block(ids, b",".join(refs), b",".join(sorted(formats)), b"".join(lines))


def part_writer(job: ExportJob, resource_type: str, chunk_sequence: int, first_part: int = 0) -> NdjsonWriter:
    """The segments of one type of one chunk (or of one shared type at the end), in the chunk's own sequence
    range from its `first_part`-th segment on."""
    return NdjsonWriter(partner_id=job.partner_id, job_id=job.id, resource_type=resource_type,
                        first_sequence=planning.part_sequence(chunk_sequence, first_part),
                        max_parts=planning.PARTS_PER_CHUNK - first_part, kind=SEGMENT_KIND, folder=SEGMENT_FOLDER)


def segments(parts: NdjsonWriter, job: ExportJob, chunk: ExportChunk | None) -> list[ExportFilePart]:
    return [ExportFilePart(job_id=job.id, chunk=chunk, resource_type=f.resource_type, sequence=f.sequence,
                           storage_key=f.storage_key, count=f.count, size=f.size) for f in parts.files]


def write_chunk(chunk: ExportChunk, context: rules.ExportContext, *,
                heartbeat: Callable[[], None] = lambda: None, member_ids: Sequence[int] | None = None
                ) -> ChunkResult:
    """Write one chunk's rows, type by type, and its transmitter Provenance to segments; a rerun overwrites
    the same keys.

    `member_ids`: the chunk's members still allowed when it started (default: all of them).

    `heartbeat` is called between blocks once HEARTBEAT_SECONDS have passed; it raises when the
    lease was lost, which abandons the half-written segment (storage writers only commit on success).
    """
    job = chunk.job
    members = chunk.member_ids if member_ids is None else list(member_ids)
    result = ChunkResult()
    targets: list[str] = []
    interval = min(max(settings.JOB_LEASE_SECONDS / 3, 0.5), HEARTBEAT_SECONDS)
    last_beat = time.monotonic()
    formats: set[str] = set()
    for resource_type in chunk.types:
        sql, params = chunk_sql(resource_type, members, context)
        prefix = f"{resource_type}/"
        with part_writer(job, resource_type, chunk.sequence, result.parts) as parts:
            for block in blocks(sql, params):
                parts.write_block(block.lines, len(block.ids))
                if resource_type != PROVENANCE_TYPE:  # a stored Provenance is not a target of ours
                    targets.extend(prefix + fhir_id for fhir_id in block.ids)
                    if block.formats:
                        formats.update(block.formats.decode().split(","))
                if block.refs:
                    result.refs.update(block.refs.decode().split(","))
                if time.monotonic() - last_beat > interval:
                    heartbeat()
                    last_beat = time.monotonic()
        result.count += parts.count
        result.size += parts.size
        result.parts += len(parts.parts)
        result.files += segments(parts, job, chunk)
    if targets and PROVENANCE_TYPE in context.types:
        result.files += write_transmitter_provenance(job, chunk, chunk.sequence, targets, sorted(formats),
                                                     result.parts)
        result.parts += 1
        result.refs.add(provenance.payer_reference())  # its agent: our Organization, written by write_shared
    return result


def write_transmitter_provenance(job: ExportJob, chunk: ExportChunk | None, chunk_sequence: int,
                                 targets: list[str], source_formats: Sequence[str],
                                 first_part: int = 0) -> list[ExportFilePart]:
    """One Provenance naming us as transmitter of this chunk's resources (spec §5.6, §5.7 rule 8).

    Only when the export's types let Provenance in (Bulk Data `_type`: "The response SHALL be filtered to only
    include resources of the specified resource types"; docs/exports.md, "Provenance and `_type`").
    """
    provenance_id = str(uuid.uuid5(PROVENANCE_NAMESPACE, f"{job.id}/{chunk_sequence}"))
    line = provenance.transmitter_provenance_line(targets, recorded=job.transaction_time,
                                                  provenance_id=provenance_id,
                                                  source_formats=source_formats)
    with part_writer(job, PROVENANCE_TYPE, chunk_sequence, first_part) as parts:
        parts.write(line)
    return segments(parts, job, chunk)


def shared_rows(resource_type: str, fhir_ids: Sequence[str], elements: Sequence[str] = ()) -> Iterable[bytes]:
    """(fhir_id, source format, NDJSON line) of each shared resource named, one COPY row each."""
    sql = (f"SELECT r.fhir_id, NULLIF(r.source_format, ''), {rules.body_sql(resource_type, elements=elements)}"  # noqa: S608
           " FROM pdex_resource r WHERE r.resource_type = %(type)s AND r.member_id IS NULL"
           " AND r.fhir_id = ANY(%(ids)s) ORDER BY r.fhir_id")
    return copy_rows(sql, {"type": resource_type, "ids": list(fhir_ids)})


def write_shared(job: ExportJob, refs: Iterable[str], *, first_sequence: int, types: Sequence[str] | None = None,
                 elements: Sequence[str] = ()) -> tuple[dict[str, int], list[ExportFilePart]]:
    """The shared resources (Organization, Practitioner, …) the exported rows reference, once per export.

    Only the requested types are written; returns resources written per type and the files.
    """
    wanted = set(types if types is not None else rules.EXPORT_TYPES)
    by_type: dict[str, list[str]] = {}
    for ref in refs:
        resource_type, _, fhir_id = ref.partition("/")
        if resource_type in planning.SHARED_TYPES and resource_type in wanted and fhir_id:
            by_type.setdefault(resource_type, []).append(fhir_id)
    payer_type, _, payer_id = provenance.payer_reference().partition("/")
    counts: dict[str, int] = {}
    files: list[ExportFilePart] = []
    targets: list[str] = []
    formats: set[str] = set()
    for offset, resource_type in enumerate(sorted(by_type)):
        written: set[str] = set()
        with part_writer(job, resource_type, first_sequence + offset) as parts:
            for row in shared_rows(resource_type, sorted(set(by_type[resource_type])), elements):
                fhir_id, source_format, line = row.split(FIELD, 2)
                parts.write(line)
                written.add(fhir_id.decode())
                if source_format:
                    formats.add(source_format.decode())
            if resource_type == payer_type and payer_id in by_type[resource_type] and payer_id not in written:
                # The transmitter Provenance names us; a payer whose own Organization is not in its loaded data
                # still sends one, so no exported reference dangles.
                parts.write(json.dumps(provenance.payer_organization(), separators=(",", ":")).encode() + b"\n")
                written.add(payer_id)
        targets += [f"{resource_type}/{fhir_id}" for fhir_id in sorted(written)]
        counts[resource_type] = parts.count
        files += segments(parts, job, None)
    if targets and PROVENANCE_TYPE in wanted:
        files += write_transmitter_provenance(job, None, first_sequence + len(by_type), targets, sorted(formats))
    return counts, files
