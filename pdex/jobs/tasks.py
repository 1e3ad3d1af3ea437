"""Housekeeping of the asynchronous-job machinery: expire outputs past their TTL."""

from __future__ import annotations

from celery import shared_task

from pdex.jobs import asyncstatus

__all__ = ["expire_outputs"]


@shared_task(name="pdex.expire_outputs", acks_late=True, ignore_result=True)
def expire_outputs() -> int:
    """Delete the files of jobs past expires_at (and any left by a cancel); their status URLs answer 404."""
    return asyncstatus.expire_outputs()
