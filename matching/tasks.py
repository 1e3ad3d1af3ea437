"""Celery tasks of bulk member match: thin wrappers; the work is in matching.services.

start_match_job → one match_batch per slice of entries → the batch that finishes the count (in
PostgreSQL) queues finish_match_job. Every task is safe to deliver twice. A lost database connection is
retried with backoff; any other failure, or retries running out, fails the job with an OperationOutcome.
"""

from __future__ import annotations

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from matching import services


class MatchJobTask(Task):
    autoretry_for = (OperationalError, InterfaceError)
    max_retries = 5
    retry_backoff = True
    acks_late = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        services.fail_job(args[0], exc)


@shared_task(name="matching.start_match_job", base=MatchJobTask)
def start_match_job(job_id: str) -> None:
    for start, end in services.plan_job(job_id):
        match_batch.delay(job_id, start, end)


@shared_task(name="matching.match_batch", base=MatchJobTask)
def match_batch(job_id: str, start: int, end: int) -> None:
    if services.run_batch(job_id, start, end):
        finish_match_job.delay(job_id)


@shared_task(name="matching.finish_match_job", base=MatchJobTask)
def finish_match_job(job_id: str) -> None:
    services.finish_job(job_id)
