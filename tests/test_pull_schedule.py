"""The schedule of follow-up pulls: weekly during the first 90 days of our coverage (run-off), quarterly for
concurrent coverage after that, the last one on the consent's last day, none after it or after a revocation;
and what beat starts when pulls are due."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from requesting import consents
from requesting.consent_resource import ConsentTerms, OldCard
from requesting.models import PreviousPayer, PullJob
from requesting.schedule import next_pull_at, schedule_due_pulls
from tests.builders import make_member

COVERAGE = date(2026, 1, 1)


def at(day: date, hour: int = 9) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_weekly_during_the_run_off_window_then_quarterly_for_concurrent_coverage():
    end = date(2026, 12, 31)
    assert next_pull_at(after=at(date(2026, 1, 10)), coverage_start=COVERAGE, period_end=end) == at(date(2026, 1, 17))
    assert next_pull_at(after=at(date(2026, 3, 31)), coverage_start=COVERAGE, period_end=end) == at(date(2026, 4, 7))
    assert next_pull_at(after=at(date(2026, 4, 1)), coverage_start=COVERAGE, period_end=end) == at(date(2026, 7, 1))


def test_the_last_pull_is_on_the_consents_last_day_and_none_comes_after_it():
    end = date(2026, 3, 31)  # an enrollment consent: 90 days after our coverage began
    assert next_pull_at(after=at(date(2026, 3, 28)), coverage_start=COVERAGE, period_end=end) == datetime(
        2026, 3, 31, tzinfo=UTC)
    assert next_pull_at(after=at(date(2026, 3, 31)), coverage_start=COVERAGE, period_end=end) is None


def test_the_schedule_is_a_setting(settings):
    assert next_pull_at(after=at(date(2026, 1, 10)), coverage_start=COVERAGE, period_end=date(2026, 12, 31),
                        runoff_every=3) == at(date(2026, 1, 13))


@pytest.mark.django_db
def test_beat_starts_one_pull_per_payer_and_since_and_never_for_a_revoked_consent(settings):
    settings.PAYER_NPI = "1999999999"
    payer = PreviousPayer.objects.create(name="Old Plan", npi="1234567893", fhir_base_url="https://old.example/fhir",
                                         client_id="abc", token_endpoint="https://old.example/oauth/token")
    today = timezone.localdate()
    recorded = []
    for n in range(4):
        recorded.append(consents.record_consent(
            member=make_member(f"np-{n}"), payer=payer, terms=ConsentTerms("sensitive", today, today + timedelta(90)),
            scenario="enrollment", coverage_start=today, old_card=OldCard(member_id=f"M{n}"), via="admin",
            actor="test"))
    pulled = timezone.now() - timedelta(days=8)
    type(recorded[0]).objects.filter(pk__in=[recorded[0].pk, recorded[1].pk]).update(
        last_transaction_time=pulled, next_pull_at=timezone.now() - timedelta(hours=1))
    consents.revoke_consent(recorded[3], reason="withdrawn", actor="test")
    jobs = schedule_due_pulls()
    assert sorted((job.since, job.members) for job in jobs if job.since) == [(pulled, 2)]
    assert [job.members for job in jobs if job.since is None] == [1]
    assert all(job.trigger == PullJob.Trigger.SCHEDULE for job in jobs)
    assert not any(recorded[3].member_id in job.pull_members.values_list("member_id", flat=True) for job in jobs)
    assert schedule_due_pulls() == []  # members in a pull under way wait for it
