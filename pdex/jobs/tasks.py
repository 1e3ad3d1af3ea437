"""Housekeeping of the asynchronous-job machinery (maintenance queue): the recovery sweep, output expiry."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from pdex.ingest import expire_tombstones
from pdex.jobs import asyncstatus, engine, servicelevels

__all__ = ["expire_outputs", "sweep_stale_work"]


@shared_task(name="pdex.expire_outputs", acks_late=True, ignore_result=True)
def expire_outputs() -> int:
    """Delete the files of jobs past expires_at (and any left by a cancel); their status URLs answer 404."""
    return asyncstatus.expire_outputs()


@shared_task(name="pdex.sweep_stale_work", ignore_result=True)
def sweep_stale_work() -> dict[str, int]:
    """Beat: nudge again the work that lost its worker or its message (pdex.jobs.engine.sweep), log the jobs
    about to miss their deadline (pdex.jobs.servicelevels), and expire tombstones past TOMBSTONE_RETENTION_DAYS."""
    found = engine.sweep()
    warned = servicelevels.warn_near_deadlines()
    expired = expire_tombstones(now=timezone.now(), retention_days=settings.TOMBSTONE_RETENTION_DAYS)
    return {"units": sum(len(ids) for ids in found.units.values()), "plans": len(found.plans),
            "finishes": len(found.finishes), "failed": len(found.failed), "deadline_warnings": len(warned),
            "tombstones_expired": expired}
