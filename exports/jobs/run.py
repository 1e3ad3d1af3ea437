"""Running export chunks under the job engine: claim the next chunk due, write it, record its files.

Every step may run twice: a chunk is leased by one worker at a time, its files have deterministic keys,
and what a worker that lost its lease wrote is never recorded.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from exports import files, planning, withdrawal, writer
from exports.jobs.plan import job_params
from exports.kind import EXPORT
from exports.models import ExportChunk
from pdex.jobs import engine
from pdex.jobs.engine import Finished, LeaseLost, UnitOutcome
from pdex.jobs.storage import get_storage

__all__ = ["LeaseLost", "delete_objects", "finish_chunk", "heartbeat", "lease", "run_chunk"]


def lease(chunk_id: int, owner: str, *, now: datetime | None = None) -> ExportChunk | None:
    """Take this chunk if it is due (pending, or running under an expired lease) and its job is running."""
    return engine.claim(EXPORT, owner, unit_id=chunk_id, now=now)


def heartbeat(chunk_id: int, owner: str, *, now: datetime | None = None) -> None:
    engine.heartbeat(EXPORT, chunk_id, owner, now=now)


def write(chunk: ExportChunk, beat) -> writer.ChunkResult:
    """Re-check the chunk's members' consent as it starts (those whose consent changed since the plan), then
    write only those still allowed."""
    live = withdrawal.live_members(chunk.job.partner, chunk.member_ids, chunk.regular_member_ids,
                                   versions=chunk.consent_versions, partner_judged=chunk.job.partner_version)
    context = job_params(chunk.job).context(regular_member_ids=live.regular_member_ids)
    result = writer.write_chunk(chunk, context, heartbeat=beat, member_ids=live.member_ids)
    result.withdrawn = live.withdrawn
    return result


def finish_chunk(chunk: ExportChunk, owner: str, result: writer.ChunkResult, *,
                 now: datetime | None = None) -> bool:
    """Record the chunk as done with its files, count it on the job; True when it was the last one."""
    return _finish(chunk, owner, result, now=now).last


def _finish(chunk: ExportChunk, owner: str, result: writer.ChunkResult, *, now: datetime | None = None) -> Finished:
    low, high = planning.part_sequence(chunk.sequence, 0), planning.part_sequence(chunk.sequence + 1, 0)
    stale_keys: list[str] = []

    def record() -> None:
        stale_keys.extend(files.record_parts(chunk.job_id, result.files, low, high))

    finished = engine.finish(EXPORT, chunk, owner, record=record, now=now or timezone.now(), count=result.count,
                             size=result.size, parts=result.parts, refs=sorted(result.refs),
                             withdrawn_member_ids=sorted(result.withdrawn))
    delete_objects(stale_keys)
    if not finished.job_running:
        # Cancelled (or failed) while we wrote: what we just wrote must not outlive the job.
        files.discard_parts(chunk.job_id, low, high)
    return finished


def run_chunk(chunk_id: int | None = None, *, worker: str = "") -> UnitOutcome:
    """Claim the next chunk due (or this one), write it and record it; the last one asks for the finalize."""
    return engine.run_one(EXPORT, write, _finish, worker=worker, unit_id=chunk_id,
                          describe=lambda chunk: "+".join(chunk.types))


def delete_objects(keys: list[str]) -> None:
    if keys:
        storage = get_storage()
        for key in keys:
            storage.delete_prefix(key)
