"""The one way a job writes its NDJSON files: parts under deterministic keys, split at a size limit, each
committed atomically by the storage backend, and described as OutputFile rows for the manifest."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any
from uuid import UUID

from django.conf import settings

from pdex.jobs.models import OutputFile
from pdex.jobs.storage import get_storage
from pdex.models import Partner


def job_prefix(partner_id: int, job_id: UUID | str) -> str:
    return f"{partner_id}/{job_id}/"


def output_key(partner_id: int, job_id: UUID | str, kind: str, resource_type: str, sequence: int,
               folder: str = "") -> str:
    """Deterministic: the same part of the same job always lands on the same key (reruns overwrite).
    `folder` (ending in "/") groups a job's intermediate objects, e.g. the segments an export joins."""
    return f"{job_prefix(partner_id, job_id)}{folder}{kind}-{resource_type}-{sequence:05d}.ndjson"


class NdjsonWriter:
    """NDJSON parts of one (kind, resource type) of a job: part n gets sequence `first_sequence + n`, and a new
    part starts before one would pass `max_bytes` (unless a single line does). Use as a context manager: a
    part is committed when the next one starts or the block ends, and abandoned if the block raises.

    `files` are the OutputFile rows of the parts written, unsaved: the caller records them with the rest of
    its unit of work (`record`, for a single file outside a unit).
    """

    def __init__(self, *, partner_id: int, job_id: UUID | str, resource_type: str, first_sequence: int = 0,
                 kind: str = OutputFile.Kind.OUTPUT, max_bytes: int | None = None, max_parts: int | None = None,
                 folder: str = ""):
        self.partner_id, self.job_id, self.resource_type, self.kind = partner_id, job_id, resource_type, kind
        self.folder = folder
        self.first_sequence = first_sequence
        self.max_bytes = max_bytes or settings.EXPORT_FILE_MAX_BYTES
        self.max_parts = max_parts
        self.storage = get_storage()
        self.part: Any = None  # the open storage writer (a context manager) of the current part
        self.handle: Any = None
        self.parts: list[list] = []  # [key, count, size] per part
        self.count = self.size = 0

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.part is not None:
                self.part.__exit__(exc_type, exc, tb)  # abandons the half-written part
            return
        self._close_part()

    @property
    def files(self) -> list[OutputFile]:
        return [OutputFile(storage_key=key, job_id=self.job_id, partner_id=self.partner_id, kind=self.kind,
                           resource_type=self.resource_type, count=count, size=size,
                           sequence=self.first_sequence + index)
                for index, (key, count, size) in enumerate(self.parts)]

    def _close_part(self) -> None:
        if self.part is not None:
            part, self.part, self.handle = self.part, None, None
            part.__exit__(None, None, None)  # commits the object (atomic rename / upload)

    def _open_part(self) -> None:
        self._close_part()
        if self.max_parts is not None and len(self.parts) >= self.max_parts:
            raise ValueError(f"more than {self.max_parts} files of {self.resource_type}; raise EXPORT_FILE_MAX_BYTES")
        key = output_key(self.partner_id, self.job_id, self.kind, self.resource_type,
                         self.first_sequence + len(self.parts), self.folder)
        self.part = self.storage.writer(key)
        self.handle = self.part.__enter__()
        self.parts.append([key, 0, 0])

    def write(self, line: bytes) -> None:
        """One NDJSON line, ending with its newline."""
        self.write_block(line, 1)

    def write_block(self, lines: bytes, count: int) -> None:
        """`count` NDJSON lines, each ending with its newline; a block that would overfill the part is split
        into its lines so no file passes the limit (unless a single line does)."""
        size = len(lines)
        current = self.parts[-1][2] if self.part is not None else 0
        if count > 1 and current + size > self.max_bytes:
            for line in lines.splitlines(keepends=True):
                self.write_block(line, 1)
            return
        if self.part is None or (current and current + size > self.max_bytes):
            self._open_part()
        self.handle.write(lines)
        self.parts[-1][1] += count
        self.parts[-1][2] += size
        self.count += count
        self.size += size

    def ensure_part(self) -> None:
        """Write an empty file when nothing was written (a manifest entry that must exist even empty)."""
        if not self.parts:
            self._open_part()


def record(files: Iterable[OutputFile]) -> list[OutputFile]:
    """Upsert OutputFile rows by storage key (a rerun of the same part overwrites its row)."""
    files = list(files)
    OutputFile.objects.bulk_create(files, update_conflicts=True, unique_fields=["storage_key"],
                                   update_fields=["job_id", "partner", "kind", "resource_type", "count", "size",
                                                  "sequence"])
    return files


def write_output_file(*, partner: Partner, job_id: UUID | str, resource_type: str, lines: Iterable[bytes],
                      kind: str = OutputFile.Kind.OUTPUT, sequence: int = 0) -> OutputFile:
    """One whole file of `lines` (each without its newline), written and recorded at once."""
    with NdjsonWriter(partner_id=partner.pk, job_id=job_id, resource_type=resource_type, kind=kind,
                      first_sequence=sequence, max_bytes=2 ** 62) as out:
        for line in lines:
            out.write(line + b"\n")
        out.ensure_part()
    [output] = record(out.files)
    return OutputFile.objects.get(storage_key=output.storage_key)


# gzip at level 1: ~10× fewer bytes for FHIR NDJSON at ~250 MB/s a core, so compressing keeps up with the wire.
GZIP_LEVEL = 1


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header lets us answer gzip (RFC 9110 §12.5.3: `gzip`, or `*`, with q > 0)."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding:
            weights[coding.strip().lower()] = q
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


def gzipped(blocks: Iterable[bytes], level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """A gzip stream of `blocks`, compressed as they come: memory is one block, whatever the file's size.

    zlib's own streaming compressor (gzip wrapper, wbits=31) rather than Django's GZipMiddleware, which would
    compress every response of the API at level 6; only NDJSON files are worth it, at a level that keeps up.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    for block in blocks:
        if data := compressor.compress(block):
            yield data
    yield compressor.flush()
