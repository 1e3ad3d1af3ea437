"""Export tasks: plan a job, run one chunk, finalize, re-queue stale work. Thin: the work is in exports.jobs.

Every task may be delivered twice (acks_late, a worker killed mid-task): each one looks at the state in
PostgreSQL first and does nothing when the work is done, taken, or the job was cancelled.
"""

from __future__ import annotations

import logging

from celery import shared_task

from exports import jobs

log = logging.getLogger(__name__)

__all__ = ["finalize_export_task", "plan_export_task", "requeue_stale_chunks", "run_chunk_task"]


@shared_task(name="exports.plan_export", acks_late=True)
def plan_export_task(job_id: str) -> int:
    """Re-check consent, create the chunks and send them to the workers."""
    chunk_ids = jobs.plan(job_id)
    for chunk_id in chunk_ids:
        run_chunk_task.delay(chunk_id)
    return len(chunk_ids)


@shared_task(name="exports.run_chunk", bind=True, acks_late=True, max_retries=None)
def run_chunk_task(self, chunk_id: int) -> str:
    """Lease the chunk, write it, count it; the worker that finishes the last chunk finalizes the job."""
    outcome = jobs.run_chunk(chunk_id, worker=self.request.hostname or "")
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state


@shared_task(name="exports.finalize_export", acks_late=True)
def finalize_export_task(job_id: str) -> bool:
    return jobs.finalize(job_id)


@shared_task(name="exports.requeue_stale_chunks")
def requeue_stale_chunks() -> dict[str, int]:
    """Beat: send again the chunks whose lease expired (worker died), stuck plans and finalizations."""
    found = jobs.requeue_stale()
    for chunk_id in found.chunks:
        run_chunk_task.delay(chunk_id)
    for job_id in found.plans:
        plan_export_task.delay(job_id)
    for job_id in found.finalizes:
        finalize_export_task.delay(job_id)
    if found.chunks or found.plans or found.finalizes:
        log.info("requeued %d chunks, %d plans, %d finalizations", len(found.chunks), len(found.plans),
                 len(found.finalizes))
    return {"chunks": len(found.chunks), "plans": len(found.plans), "finalizes": len(found.finalizes)}
