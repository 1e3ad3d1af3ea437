"""Housekeeping of the authorization server."""

from celery import shared_task
from oauth2_provider.models import clear_expired


@shared_task(name="pdex.clear_expired_tokens", acks_late=True)
def clear_expired_tokens() -> None:
    """Delete expired access tokens (5-minute tokens pile up fast); idempotent."""
    clear_expired()
