"""Expired access tokens are removed by a beat task, live ones stay."""

from django.conf import settings
from oauth2_provider.models import AccessToken

from pdex.tasks import clear_expired_tokens
from tests.conftest import issue_token


def test_clear_expired_tokens_keeps_live_ones(partner):
    live = issue_token(partner)
    issue_token(partner, expires_in=-3600)
    clear_expired_tokens()
    assert list(AccessToken.objects.values_list("token", flat=True)) == [live]


def test_beat_runs_token_cleanup():
    assert settings.CELERY_BEAT_SCHEDULE["clear-expired-tokens"]["task"] == "pdex.clear_expired_tokens"
