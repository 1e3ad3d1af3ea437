"""Export tasks: plan a job, run the next chunk due, finalize. Thin: the work is in exports.jobs.

Every task may be delivered twice (acks_late, a worker killed mid-task): each looks at the state in
PostgreSQL first and does nothing when the work is done, taken, or the job was cancelled. A chunk message
names no chunk: it claims whichever chunk is due (pdex.jobs.engine.claim).
"""

from __future__ import annotations

from celery import shared_task

from exports import jobs, withdrawal
from exports.kind import EXPORT
from pdex.jobs import engine

__all__ = ["finalize_export_task", "plan_export_task", "run_chunk_task", "withdraw_ended_task"]


@shared_task(name=EXPORT.plan_task, acks_late=True)
def plan_export_task(job_id: str) -> int:
    """Re-check consent and create the chunks (planning nudges one chunk task per chunk)."""
    return len(jobs.plan(job_id))


@shared_task(name=EXPORT.run_task, bind=True, acks_late=True)
def run_chunk_task(self, chunk_id: int | None = None) -> str:
    """Claim a chunk, write it, record it; a failed attempt is nudged again after its back-off."""
    outcome = jobs.run_chunk(chunk_id, worker=self.request.hostname or "")
    if outcome.retry_in is not None:
        engine.nudge(EXPORT.run_task, countdown=outcome.retry_in)
    return outcome.state


@shared_task(name=EXPORT.finish_task, acks_late=True)
def finalize_export_task(job_id: str) -> bool:
    return jobs.finalize(job_id)


@shared_task(name="exports.withdraw_ended", acks_late=True)
def withdraw_ended_task() -> int:
    """Withdraw completed exports holding a member whose consent has expired since (maintenance queue)."""
    return len(withdrawal.withdraw_ended())
