"""Celery tasks of the requesting side: thin wrappers over requesting.pull.stages and the schedule.

start_pull (control) plans a pull; each run_pull_unit message (pull queue) claims whichever unit is due; the
unit that completes a stage asks for advance_pull (control), which adds the next stage or completes the pull.
Beat runs schedule_pulls and advance_signing_keys (maintenance). Every task is safe to deliver twice.
"""

from __future__ import annotations

from celery import shared_task

from pdex.jobs import engine
from requesting import keys, schedule
from requesting.kind import PULL
from requesting.pull import stages


@shared_task(name=PULL.plan_task, acks_late=True)
def start_pull(job_id: str) -> int:
    return stages.plan(job_id)


@shared_task(name=PULL.run_task, bind=True, acks_late=True)
def run_pull_unit(self, unit_id: int | None = None) -> str:
    outcome = stages.run_unit(unit_id, worker=self.request.hostname or "")
    if outcome.retry_in is not None:
        engine.nudge(PULL.run_task, countdown=outcome.retry_in)
    return outcome.state


@shared_task(name=PULL.finish_task, acks_late=True)
def advance_pull(job_id: str) -> str:
    return stages.advance(job_id)


@shared_task(name="requesting.schedule_pulls", acks_late=True)
def schedule_pulls() -> int:
    """Beat: start the follow-up pulls that are due (requesting.schedule)."""
    return len(schedule.schedule_due_pulls())


@shared_task(name="requesting.advance_signing_keys", acks_late=True)
def advance_signing_keys() -> list[str]:
    """Beat: the due steps of a signing-key roll-over (requesting.keys)."""
    return keys.advance()
