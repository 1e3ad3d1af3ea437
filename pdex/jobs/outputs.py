"""Writing a job's NDJSON files to storage and recording them for the manifest."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from pdex.jobs.models import OutputFile
from pdex.jobs.storage import get_storage
from pdex.models import Partner


def job_prefix(partner_id: int, job_id: UUID | str) -> str:
    return f"{partner_id}/{job_id}/"


def output_key(partner_id: int, job_id: UUID | str, kind: str, resource_type: str, sequence: int) -> str:
    """Deterministic: the same part of the same job always lands on the same key (reruns overwrite)."""
    return f"{job_prefix(partner_id, job_id)}{kind}-{resource_type}-{sequence:05d}.ndjson"


def write_output_file(*, partner: Partner, job_id: UUID | str, resource_type: str, lines: Iterable[bytes],
                      kind: str = OutputFile.Kind.OUTPUT, sequence: int = 0) -> OutputFile:
    """Write `lines` (each one NDJSON line without its newline) and upsert the OutputFile row."""
    key = output_key(partner.pk, job_id, kind, resource_type, sequence)
    count = size = 0
    with get_storage().writer(key) as handle:
        for line in lines:
            handle.write(line)
            handle.write(b"\n")
            count += 1
            size += len(line) + 1
    output, _ = OutputFile.objects.update_or_create(
        storage_key=key,
        defaults={"job_id": job_id, "partner": partner, "kind": kind, "resource_type": resource_type,
                  "count": count, "size": size, "sequence": sequence},
    )
    return output
