"""The dashboard's panels that every kind of job shares (requests per day by outcome, durations against
deadlines, service levels) and partners by status; the helpers other apps' panels use (pdex.adminsite).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, timedelta

from django.conf import settings
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from pdex.admin import charts
from pdex.adminsite import Panel, register
from pdex.jobs import servicelevels
from pdex.jobs.kinds import JobKind, kinds
from pdex.jobs.models import AsyncJob
from pdex.models import Partner

DAYS = 14
RECENT_JOBS = 80


def last_days(days: int = DAYS, *, today: date | None = None) -> list[date]:
    today = today or timezone.now().date()
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


def per_day(rows, days: list[date], names: list[str]) -> dict[str, list[int]]:
    """{name: [count per day]} from (day, name, count) rows."""
    found: dict[tuple[date, str], int] = defaultdict(int)
    for day, name, count in rows:
        found[(day, name)] += count
    return {name: [found[(day, name)] for day in days] for name in names if any(found[(d, name)] for d in days)}


def changelist(kind: JobKind, query: str = "") -> str:
    meta = kind.jobs._meta
    try:
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist") + query
    except NoReverseMatch:
        return ""


# --- what every kind of job shares -----------------------------------------------------------------

STATES = [s.value for s in AsyncJob.Status]


@register
def job_panels(request: HttpRequest) -> list[Panel]:
    days = last_days()
    since = timezone.now() - timedelta(days=DAYS)
    found = [service_level_panel()]
    for n, kind in enumerate(kinds()):
        rows = (kind.jobs.objects.filter(created_at__gte=since).annotate(day=TruncDate("created_at"))
                .values_list("day", "status").annotate(n=Count("id")))
        series = per_day(rows, days, ["completed", "failed", "cancelled", "running", "queued"])
        found.append(Panel(f"{kind.title.capitalize()} requests per day", charts.stacked_bars(
            [d.isoformat() for d in days], series or {"completed": [0] * len(days)},
            title=f"{kind.title} requests per day by outcome"), note="by the day of the request, coloured by "
            "what became of it", order=10 + n))
    found.append(Panel("Time to fulfil, against the deadline", charts.durations_against_deadlines(
        recent_dots(), width=1040, height=170, title="job durations against their deadlines"),
        note=f"the last {RECENT_JOBS} jobs of every kind: finished ones at the time they took, open ones at "
             "their age; the dashed line is the deadline", order=30, wide=True))
    by_status = Counter(dict(Partner.objects.values_list("status").annotate(n=Count("id"))))
    found.append(Panel("Partners by status", charts.horizontal_bars(
        [(status.label, by_status.get(status.value, 0), str(by_status.get(status.value, 0)))
         for status in Partner.Status], title="partners by status"), order=60))
    return found


def recent_dots() -> list[charts.Dot]:
    now = timezone.now()
    dots: list[tuple] = []
    for kind in kinds():
        for job in kind.jobs.objects.order_by("-created_at")[:RECENT_JOBS]:
            end = job.finished_at if job.is_finished else now
            state = job.deadline_state(now)
            state = {"on time": "open"}.get(state, state)
            if job.status == AsyncJob.Status.CANCELLED:
                continue
            dots.append((job.created_at, charts.Dot(f"{kind.title} {str(job.pk)[:8]}",
                                                    (end - job.created_at).total_seconds(),
                                                    (job.deadline - job.created_at).total_seconds(), state)))
    return [dot for _, dot in sorted(dots, key=lambda item: item[0], reverse=True)[:RECENT_JOBS]]


def service_level_panel() -> Panel:
    """Success rate, time to fulfil and the share within deadline, per kind, over METRICS_SERVICE_LEVEL_DAYS."""
    window = settings.METRICS_SERVICE_LEVEL_DAYS
    rows = []
    for kind in kinds():
        figures = servicelevels.fulfilment(kind, since=timezone.now() - timedelta(days=window))
        near = servicelevels.near_deadline(kind).count()
        link = changelist(kind, "?deadline=soon")
        flag = format_html('<a href="{}" class="pdex-flag">{} near or past deadline</a>', link, near) if near else "–"
        rows.append((kind.title, figures.finished, _percent(figures.success_rate),
                     _seconds(figures.mean_seconds), _seconds(figures.p95_seconds),
                     _percent(figures.within_deadline_share), flag))
    body = format_html(
        '<table class="pdex-table"><thead><tr><th>kind</th><th>finished</th><th>success</th><th>mean time</th>'
        "<th>95th pct</th><th>within deadline</th><th>open jobs</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                         rows))
    return Panel(f"Service levels, last {window} days", body,
                 note=f"deadline {settings.JOB_DEADLINE_DAYS} days after the request; success = completed / "
                      "(completed + failed); cancelled requests count for neither", order=1, wide=True)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _seconds(value: float | None) -> str:
    return "–" if value is None else charts.duration(value)
