"""Asynchronous bulk import by our own systems: NDJSON files named by URL, on the job engine.

    POST /fhir/$import (Parameters: input[type, url]…, Prefer: respond-async) → 202, Content-Location
    job queued ──plan (control)──▶ one unit per file ──each file streamed and loaded through
    pdex.ingest.load_lines (pull queue): validation, extraction, member identity, as load_ndjson ──▶ the finish
    sums the counts ──▶ completed; GET $import-status/{id}: 202 + X-Progress, then 200 with the counts.

An input URL must lie under one of IMPORT_SOURCES (our file storage folder, or an S3 bucket/prefix we own);
nothing else is ever opened. Loading is idempotent (an upsert), so a file loaded twice by a retried unit
stores nothing new the second time. docs/data-store.md, "Bulk import".
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pdex import audit
from pdex.auth.scopes import R4_RESOURCE_TYPES
from pdex.fhir import BadRequest, NotFound, operation_outcome, outcome_issue
from pdex.ingest import BadLine, LoadReport, load_lines
from pdex.jobs import engine
from pdex.jobs.models import ImportFile, ImportJob, JobState
from pdex.jobs.storage import storage_from_url
from pdex.models import InternalClient
from pdex.parameters import read_parameters
from pdex.write.access import CREATE, UPDATE, Writer
from pdex.write.kind import IMPORT

NDJSON = "application/fhir+ndjson"
NOTES_PER_FILE = 50
HEARTBEAT_LINES = 2000


@dataclass(frozen=True)
class ImportInput:
    url: str
    resource_type: str = ""


def source_of(url: str) -> tuple[str, str] | None:
    """(storage root URL, key) of an input URL under one of IMPORT_SOURCES; None when it is under none."""
    for root in settings.IMPORT_SOURCES:
        prefix = root.rstrip("/") + "/"
        if url.startswith(prefix) and len(url) > len(prefix) and ".." not in url[len(prefix):].split("/"):
            return root.rstrip("/"), url[len(prefix):]
    return None


def parse_import_request(body: Any, writer: Writer) -> list[ImportInput]:
    """The inputs of a `$import` Parameters body (Bulk Data import: inputFormat, input with type and url)."""
    inputs: list[ImportInput] = []
    for parameter in read_parameters(body):
        if parameter.name == "inputFormat" and parameter.value not in (NDJSON, "application/ndjson"):
            raise BadRequest(f"inputFormat must be {NDJSON}.", code="not-supported")
        if parameter.name != "input":
            continue
        parts = {part.name: part.value for part in parameter.parts}
        url, resource_type = parts.get("url"), parts.get("type") or ""
        if not isinstance(resource_type, str):
            raise BadRequest(f"input #{parameter.index + 1}: type must be a string.", code="structure")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"input #{parameter.index + 1} has no url.", code="required")
        if source_of(url) is None:
            raise BadRequest(f"input #{parameter.index + 1}: the url is not under any of our import sources.",
                             code="security")
        if resource_type and resource_type not in R4_RESOURCE_TYPES:
            raise BadRequest(f"input #{parameter.index + 1}: {resource_type[:64]!r} is no FHIR R4 type.")
        for permission in (CREATE, UPDATE):
            if not writer.may(permission, resource_type or "*"):
                raise BadRequest(f"input #{parameter.index + 1}: the token may not write "
                                 f"{resource_type or 'every type'}.", status=403, code="forbidden")
        inputs.append(ImportInput(url=url, resource_type=resource_type))
    if not inputs:
        raise BadRequest("Name at least one input (type and url).", code="required")
    return inputs


def start_import(client: InternalClient, inputs: list[ImportInput], *, request_url: str, request=None) -> ImportJob:
    with transaction.atomic():
        job = ImportJob.objects.create(client=client, request_url=request_url, transaction_time=timezone.now())
        ImportFile.objects.bulk_create([ImportFile(job=job, sequence=n, url=i.url, resource_type=i.resource_type)
                                        for n, i in enumerate(inputs)])
        engine.nudge_on_commit(IMPORT.plan_task, str(job.id))
    audit.record("bulk-import-kickoff", audit.SUCCESS, client_id=client.application.client_id,
                 entity=f"importjob/{job.id}", detail={"files": len(inputs)}, request=request)
    return job


def plan(job_id: UUID | str, *, now: datetime | None = None) -> int:
    """queued → running over its files (created at kick-off); a redelivered plan nudges them again."""
    now = now or timezone.now()
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().get(pk=job_id)
        pending = job.files.filter(status=ImportFile.Status.PENDING).count()
        if job.status == JobState.Status.QUEUED:
            ImportJob.objects.filter(pk=job.pk).update(status=JobState.Status.RUNNING, started_at=now,
                                                       progress_total=job.files.count(), progress_done=0)
        elif job.status != JobState.Status.RUNNING:
            return 0
        engine.nudge_on_commit(IMPORT.run_task, times=pending)
    return pending


def input_lines(url: str, beat: Callable[[], None]) -> Iterator[tuple[str, int, str]]:
    """(url, line number, text) of every non-blank line of an input file, streamed; gzip by suffix."""
    root, key = source_of(url) or ("", "")
    if not root:
        raise ValueError("the input url is not under an import source")
    blocks = storage_from_url(root).read(key)
    if url.endswith(".gz"):
        blocks = _gunzip(blocks)
    stream = io.TextIOWrapper(_BlockReader(blocks), encoding="utf-8")
    for number, text in enumerate(stream, start=1):
        if number % HEARTBEAT_LINES == 0:
            beat()
        if text.strip():
            yield url, number, text


def _gunzip(blocks: Iterator[bytes]) -> Iterator[bytes]:
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    for block in blocks:
        yield inflate.decompress(block)
    yield inflate.flush()


class _BlockReader(io.RawIOBase):
    """A readable stream over byte blocks, so TextIOWrapper splits lines without reading the file whole."""

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks, self.rest = blocks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.rest:
            try:
                self.rest = next(self.blocks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self.rest))
        buffer[:size], self.rest = self.rest[:size], self.rest[size:]
        return size


def load_file(unit: ImportFile, beat: Callable[[], None]) -> LoadReport:
    job = unit.job
    report = LoadReport()
    try:
        load_lines(input_lines(unit.url, beat), validate=job.validate, workers=1, report=report,
                   source_format=job.client.source_format)
    except (OSError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        report.bad.append(BadLine(unit.url, 0, f"cannot read the file: {type(exc).__name__}"))
    except Exception as exc:
        # botocore's errors (a missing object, access refused) without importing botocore in the web process.
        if not type(exc).__module__.startswith("botocore"):
            raise
        report.bad.append(BadLine(unit.url, 0, f"cannot read the file: {type(exc).__name__}"))
    return report


def record(unit: ImportFile, owner: str, report: LoadReport) -> engine.Finished:
    stored = report.inserted + report.updated
    return engine.finish(IMPORT, unit, owner, read=sum(report.read.values()), stored=sum(stored.values()),
                         bad=len(report.bad), counts=dict(report.read),
                         notes=[str(b) for b in report.bad[:NOTES_PER_FILE]])


def run_file(unit_id: int | None = None, *, worker: str = "") -> engine.UnitOutcome:
    return engine.run_one(IMPORT, load_file, record, worker=worker, unit_id=unit_id,
                          describe=lambda unit: unit.url[-100:])


def finish(job_id: UUID | str, *, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().select_related("client__application").get(pk=job_id)
        if job.status != JobState.Status.RUNNING or job.progress_done < job.progress_total:
            return False
        counts: Counter[str] = Counter()
        for file_counts in job.files.values_list("counts", flat=True):
            counts.update(file_counts)
        ImportJob.objects.filter(pk=job.pk).update(status=JobState.Status.COMPLETED, finished_at=now,
                                                   counts=dict(sorted(counts.items())))
    audit.record(IMPORT.audit_action, audit.SUCCESS, client_id=job.client.application.client_id,
                 entity=f"importjob/{job.id}", detail={"counts": dict(counts)})
    return True


@dataclass(frozen=True)
class ImportStatus:
    http_status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


def status(job_id: UUID | str, client: InternalClient) -> ImportStatus:
    """What `$import-status/{id}` answers its client (anyone else: 404), as the export status URL does."""
    job = ImportJob.objects.filter(pk=job_id, client=client).first()
    if job is None:
        raise NotFound(f"No import {job_id} of this client.", audit_reason="no such import of this client")
    if job.status in (JobState.Status.QUEUED, JobState.Status.RUNNING):
        return ImportStatus(202, None, {"X-Progress": f"{job.progress_done} of {job.progress_total} files",
                                        "Retry-After": str(settings.STATUS_RETRY_AFTER_SECONDS)})
    if job.status != JobState.Status.COMPLETED:
        outcome = job.error or operation_outcome(outcome_issue("error", "exception", "The import failed."))
        return ImportStatus(500, outcome, {})
    files = list(job.files.order_by("sequence"))
    body = {
        "transactionTime": job.transaction_time.isoformat(), "request": job.request_url,
        "requiresAccessToken": True,
        "output": [{"type": f.resource_type or "*", "inputUrl": f.url, "count": f.read, "stored": f.stored}
                   for f in files],
        "error": [{"type": "OperationOutcome", "inputUrl": f.url, "count": f.bad,
                   "outcome": operation_outcome(*(outcome_issue("error", "invalid", note) for note in f.notes))}
                  for f in files if f.bad],
        "counts": job.counts,
    }
    return ImportStatus(200, body, {})
