"""When the next pull of a member's data from a previous payer is due (run-off and follow-up pulls).

The rule is pure (`next_pull_at`): after a pull, the next one comes every P2P_RUNOFF_PULL_DAYS (weekly) during
the first P2P_RUNOFF_DAYS (90) of our coverage — claims the old plan is still adjudicating arrive then — and
every P2P_CONCURRENT_PULL_DAYS (quarterly) after that, which only a concurrent-coverage consent lives long
enough to see. The last pull falls on the consent's last day; after that, and after a revocation, none.
Beat runs `schedule_due_pulls` every P2P_SCHEDULE_SECONDS: each due group becomes a pull, incremental with
`_since` = the transactionTime of the export that last brought those members' data.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.utils import timezone

from requesting.consents import valid_on
from requesting.models import CollectedConsent, PullJob
from requesting.pull.start import start_pulls


def pull_interval(*, coverage_start: date, on: date, runoff_days: int, runoff_every: int,
                  concurrent_every: int) -> timedelta:
    """Weekly while the member is in the run-off window after our coverage started, quarterly after."""
    in_runoff = on < coverage_start + timedelta(days=runoff_days)
    return timedelta(days=runoff_every if in_runoff else concurrent_every)


def next_pull_at(*, after: datetime, coverage_start: date, period_end: date, runoff_days: int = 90,
                 runoff_every: int = 7, concurrent_every: int = 91) -> datetime | None:
    """The next pull after one at `after`; None when the consent's period has ended by then."""
    day = after.astimezone(UTC).date()
    if day >= period_end:
        return None
    candidate = after + pull_interval(coverage_start=coverage_start, on=day, runoff_days=runoff_days,
                                      runoff_every=runoff_every, concurrent_every=concurrent_every)
    last_day = datetime.combine(period_end, time(0, 0), tzinfo=UTC)
    return min(candidate, last_day)


def next_pull_for(consent: CollectedConsent, *, after: datetime) -> datetime | None:
    """next_pull_at with the configured schedule; None for a revoked consent."""
    if consent.status != CollectedConsent.Status.ACTIVE:
        return None
    return next_pull_at(after=after, coverage_start=consent.coverage_start, period_end=consent.period_end,
                        runoff_days=settings.P2P_RUNOFF_DAYS, runoff_every=settings.P2P_RUNOFF_PULL_DAYS,
                        concurrent_every=settings.P2P_CONCURRENT_PULL_DAYS)


def stop_ended(*, today: date) -> int:
    """Consents whose period is over (or that were revoked) are due no more."""
    return (CollectedConsent.objects.filter(next_pull_at__isnull=False)
            .exclude(status=CollectedConsent.Status.ACTIVE, period_end__gte=today).update(next_pull_at=None))


def due_by_payer(*, now: datetime) -> dict[int, list[CollectedConsent]]:
    """Consents due now, valid today, with a payer we can pull from, per payer."""
    due = (valid_on(now.date()).filter(next_pull_at__lte=now, previous_payer__active=True)
           .exclude(previous_payer__client_id="").select_related("previous_payer", "member")
           .order_by("previous_payer_id", "member_id"))
    groups: dict[int, list[CollectedConsent]] = defaultdict(list)
    for consent in due:
        groups[consent.previous_payer_id].append(consent)
    return groups


def schedule_due_pulls(*, now: datetime | None = None) -> list[PullJob]:
    """Start the pulls that are due (beat): per payer, one per `_since` its due members share. Members already
    in a pull under way wait for it."""
    now = now or timezone.now()
    stop_ended(today=now.date())
    started: list[PullJob] = []
    for consents in due_by_payer(now=now).values():
        started += start_pulls(consents[0].previous_payer, consents=consents, trigger=PullJob.Trigger.SCHEDULE,
                               now=now)
    return started
