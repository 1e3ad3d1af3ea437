"""Celery tasks of bulk member match: thin wrappers over matching.jobs, on the shared job engine.

start_match_job (control) plans the batches; each match_batch message (match queue) claims whichever batch
is due; the batch that completes the count asks for finish_match_job (control). Every task is safe to
deliver twice; failures are counted on the batch and retried with a back-off (pdex.jobs.engine).
"""

from __future__ import annotations

from celery import shared_task

from matching import jobs
from matching.kind import MATCH
from pdex.jobs import engine


@shared_task(name=MATCH.plan_task, acks_late=True)
def start_match_job(job_id: str) -> int:
    return len(jobs.plan(job_id))


@shared_task(name=MATCH.run_task, bind=True, acks_late=True)
def match_batch(self, batch_id: int | None = None) -> str:
    outcome = jobs.run_batch(batch_id, worker=self.request.hostname or "")
    if outcome.retry_in is not None:
        engine.nudge(MATCH.run_task, countdown=outcome.retry_in)
    return outcome.state


@shared_task(name=MATCH.finish_task, acks_late=True)
def finish_match_job(job_id: str) -> bool:
    return jobs.finish(job_id)
