"""Service levels of every kind of job (docs/service-levels.md): deadlines, priorities, what was fulfilled in time.

Bulk Data asks a server to fulfil a request within seven days, report progress, expedite urgent requests and
report its success rate and average processing time. Every job has a `deadline` (JOB_DEADLINE_DAYS after the
request) and a `priority`; the job engine claims urgent work first and shares workers fairly between partners
(pdex.jobs.engine.claim); this module reads the figures back for the dashboard and /metrics, and the sweep
calls `warn_near_deadlines` to log the jobs about to miss theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from pdex.fhir import parse_prefer
from pdex.jobs.kinds import JobKind, kinds
from pdex.jobs.models import AsyncJob

log = logging.getLogger(__name__)

URGENT_PREFERENCE = "priority=urgent"
OPEN = (AsyncJob.Status.QUEUED, AsyncJob.Status.RUNNING)


def kind_label(kind: JobKind) -> str:
    """The kind's name in metrics and charts: "export", "bulk-member-match"."""
    return kind.title.replace(" ", "-")


def requested_priority(request) -> int:
    """The priority a kick-off asks for: `Prefer: respond-async, priority=urgent` (RFC 7240 lets a server
    ignore a preference it does not know, so a partner may send it to any server); normal otherwise."""
    header = request.headers.get("Prefer") if request is not None else None
    if settings.JOB_URGENT_REQUESTS and URGENT_PREFERENCE in parse_prefer(header):
        return AsyncJob.Priority.URGENT
    return AsyncJob.Priority.NORMAL


def preference_applied(job: AsyncJob) -> dict[str, str]:
    """The 202's `Preference-Applied` header (RFC 7240 §3): what of the Prefer header we honoured."""
    return {"Preference-Applied": "respond-async" + (f", {URGENT_PREFERENCE}" if job.is_urgent else "")}


@dataclass(frozen=True)
class Fulfilment:
    """One kind's finished jobs over a period: how many, how many succeeded, how fast, how many in time."""

    kind: str
    finished: int
    completed: int
    failed: int
    within_deadline: int
    mean_seconds: float | None
    p95_seconds: float | None

    @property
    def success_rate(self) -> float | None:
        decided = self.completed + self.failed
        return self.completed / decided if decided else None

    @property
    def within_deadline_share(self) -> float | None:
        return self.within_deadline / self.completed if self.completed else None


def fulfilment(kind: JobKind, *, since: datetime | None = None) -> Fulfilment:
    """Figures of `kind`'s jobs finished since `since` (all of them when None); cancelled ones count as
    finished but neither as success nor failure (the partner withdrew the request)."""
    table = kind.jobs._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT count(*),
                       count(*) FILTER (WHERE status = %(completed)s),
                       count(*) FILTER (WHERE status = %(failed)s),
                       count(*) FILTER (WHERE status = %(completed)s AND finished_at <= deadline),
                       avg(EXTRACT(EPOCH FROM finished_at - created_at)) FILTER (WHERE status = %(completed)s),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - created_at))
                           FILTER (WHERE status = %(completed)s)
                  FROM {table}
                 WHERE finished_at IS NOT NULL AND status IN (%(completed)s, %(failed)s, %(cancelled)s)
                   AND (%(since)s::timestamptz IS NULL OR finished_at >= %(since)s)""",  # noqa: S608
            {"completed": AsyncJob.Status.COMPLETED, "failed": AsyncJob.Status.FAILED,
             "cancelled": AsyncJob.Status.CANCELLED, "since": since})
        finished, completed, failed, within, mean, p95 = cursor.fetchone()
    return Fulfilment(kind_label(kind), finished, completed, failed, within,
                      float(mean) if mean is not None else None, float(p95) if p95 is not None else None)


def fulfilment_by_kind(*, days: int | None = None, now: datetime | None = None) -> list[Fulfilment]:
    since = (now or timezone.now()) - timedelta(days=days) if days else None
    return [fulfilment(kind, since=since) for kind in kinds()]


def warning_time(now: datetime) -> datetime:
    """Open jobs whose deadline falls before this are flagged."""
    return now + timedelta(hours=settings.JOB_DEADLINE_WARNING_HOURS)


def near_deadline(kind: JobKind, *, now: datetime | None = None):
    """Open jobs of `kind` due within JOB_DEADLINE_WARNING_HOURS, or already overdue."""
    now = now or timezone.now()
    return kind.jobs.objects.filter(status__in=OPEN, deadline__lt=warning_time(now))


def warn_near_deadlines(*, now: datetime | None = None) -> list[str]:
    """Log, once per job, every open job about to miss its deadline (the sweep calls this); their ids."""
    now = now or timezone.now()
    warned: list[str] = []
    for kind in kinds():
        jobs = near_deadline(kind, now=now).filter(deadline_warned_at__isnull=True)
        fields = ("id", "deadline", "progress_done", "progress_total", "priority")
        for job_id, deadline, done, total, priority, *partner in jobs.values_list(
                *fields, *(("partner_id",) if kind.partner_facing else ())):  # a pull has no partner
            partner_id = partner[0] if partner else None
            # Claimed by an UPDATE first, so two sweeps never both log the same job.
            if kind.jobs.objects.filter(pk=job_id, deadline_warned_at__isnull=True).update(deadline_warned_at=now):
                state = "overdue" if deadline <= now else "due soon"
                log.warning("%s %s %s: deadline %s, progress %d/%d", kind.title, job_id, state,
                            deadline.isoformat(), done, total, extra={
                                "job": str(job_id), "partner_id": partner_id, "deadline": deadline.isoformat(),
                                "deadline_state": state, "priority": AsyncJob.Priority(priority).label})
                warned.append(str(job_id))
    return warned
