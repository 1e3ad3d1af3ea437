"""Celery tasks of the pdex app (autodiscovered as `pdex.tasks`): housekeeping of auth and of job outputs."""

from celery import shared_task
from oauth2_provider.models import clear_expired

from pdex.jobs.tasks import *  # noqa: F403

__all__ = ["clear_expired_tokens", "expire_outputs", "sweep_stale_work"]  # noqa: F405


@shared_task(name="pdex.clear_expired_tokens", acks_late=True)
def clear_expired_tokens() -> None:
    """Delete expired access tokens (5-minute tokens pile up fast); idempotent."""
    clear_expired()
