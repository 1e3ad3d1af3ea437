"""Running pulls in this process (`manage.py p2p_pull`), through the same engine steps the workers run.

The rows stay the truth: this loop plans, claims the pulls' due units (several at once, in threads: the files
download in parallel), advances stages, and sleeps until the next unit is due. Workers, if any are running,
take their share of the same units under the same leases; an interrupted command is resumed by running it
again, or by the workers and the sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta

from django.db import close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from pdex.jobs.models import WorkUnit
from requesting.models import PullJob, PullUnit
from requesting.pull import stages

IDLE_SLEEP_SECONDS = 0.5


def due_units(jobs: list[PullJob], limit: int) -> list[int]:
    """Units of these pulls a claim would take now: pending past their back-off, or under an expired lease."""
    now = timezone.now()
    due = (PullUnit.objects.filter(job__in=jobs, job__status=PullJob.Status.RUNNING)
           .filter(Q(status=WorkUnit.Status.PENDING, not_before__isnull=True)
                   | Q(status=WorkUnit.Status.PENDING, not_before__lte=now)
                   | Q(status=WorkUnit.Status.RUNNING, lease_expires__lt=now))
           .order_by("sequence"))
    return list(due.values_list("id", flat=True)[:limit])


def next_due_in(jobs: list[PullJob]) -> float:
    """Seconds until the earliest deferred unit of these pulls is due (at most IDLE_SLEEP_SECONDS)."""
    soonest = (PullUnit.objects.filter(job__in=jobs, status=WorkUnit.Status.PENDING, not_before__isnull=False)
               .order_by("not_before").values_list("not_before", flat=True).first())
    if soonest is None:
        return IDLE_SLEEP_SECONDS
    return max(0.05, min((soonest - timezone.now()) / timedelta(seconds=1), IDLE_SLEEP_SECONDS * 4))


def _run(unit_id: int) -> str:
    try:
        return stages.run_unit(unit_id, worker="p2p_pull").state
    finally:
        connections.close_all()  # this thread's connection


def drive(jobs: list[PullJob], *, threads: int = 4, on_tick: Callable[[list[PullJob]], None] = lambda jobs: None,
          timeout_seconds: float | None = None) -> list[PullJob]:
    """Run these pulls to their end here, up to `threads` units at a time; returns them refreshed."""
    began = time.monotonic()
    running: dict[int, Future] = {}
    with ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="p2p-pull") as pool:
        while True:
            close_old_connections()
            for job in jobs:
                job.refresh_from_db()
                if job.status == PullJob.Status.QUEUED:
                    stages.plan(str(job.id))
                elif job.status == PullJob.Status.RUNNING and job.progress_done >= job.progress_total:
                    stages.advance(str(job.id))
                job.refresh_from_db()
            on_tick(jobs)
            if all(job.is_finished for job in jobs) and not running:
                return jobs
            if timeout_seconds is not None and time.monotonic() - began > timeout_seconds:
                raise TimeoutError("the pulls did not finish in time")
            for unit_id in [u for u in due_units(jobs, limit=threads * 2) if u not in running]:
                if len(running) >= threads:
                    break
                running[unit_id] = pool.submit(_run, unit_id)
            if running:
                finished, _ = wait(list(running.values()), timeout=IDLE_SLEEP_SECONDS, return_when=FIRST_COMPLETED)
                for unit_id in [u for u, future in running.items() if future in finished]:
                    running.pop(unit_id).result()
            else:
                time.sleep(next_due_in(jobs))
