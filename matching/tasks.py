"""Celery tasks of bulk member match: thin wrappers; the work is in matching.services.

start_match_job → one match_batch per slice of entries → the batch that finishes the count (in
PostgreSQL) queues finish_match_job. Every task is safe to deliver twice.
"""

from __future__ import annotations

from celery import shared_task

from matching import services


@shared_task(name="matching.start_match_job", acks_late=True, max_retries=5, retry_backoff=True)
def start_match_job(job_id: str) -> None:
    try:
        batches = services.plan_job(job_id)
    except Exception as exc:
        services.fail_job(job_id, exc)
        raise
    for start, end in batches:
        match_batch.delay(job_id, start, end)


@shared_task(name="matching.match_batch", acks_late=True, max_retries=5, retry_backoff=True)
def match_batch(job_id: str, start: int, end: int) -> None:
    try:
        finished = services.run_batch(job_id, start, end)
    except Exception as exc:
        services.fail_job(job_id, exc)
        raise
    if finished:
        finish_match_job.delay(job_id)


@shared_task(name="matching.finish_match_job", acks_late=True, max_retries=5, retry_backoff=True)
def finish_match_job(job_id: str) -> None:
    try:
        services.finish_job(job_id)
    except Exception as exc:
        services.fail_job(job_id, exc)
        raise
