"""What /metrics computes when it is scraped (from PostgreSQL and Redis), and the endpoint itself."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from pdex.jobs import servicelevels
from pdex.jobs.kinds import kinds
from pdex.jobs.models import AsyncJob, WorkUnit
from pdex.metrics import FULFILMENT_BUCKETS, REQUEST_SECONDS, TOKEN_REQUESTS, UNIT_BUCKETS, collectors

log = logging.getLogger(__name__)


def histogram_sql(expression: str, buckets: tuple[float, ...]) -> str:
    """Cumulative bucket counts, the sum and the count of `expression` (our own SQL, constant buckets)."""
    columns = [f"count(*) FILTER (WHERE {expression} <= {float(bound)!r})" for bound in buckets]
    return ", ".join([*columns, f"coalesce(sum({expression}), 0)", "count(*)"])


def _histogram_row(row: tuple, buckets: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    counts = [(repr(float(bound)), float(value)) for bound, value in zip(buckets, row, strict=False)]
    counts.append(("+Inf", float(row[len(buckets) + 1])))
    return counts, float(row[len(buckets)])


def job_families() -> Iterable[Metric]:
    """Jobs by kind and state, open units, unit and fulfilment durations, deadlines: every registered kind."""
    jobs = GaugeMetricFamily("pdex_jobs", "Jobs by kind, state and priority", labels=["kind", "state", "priority"])
    units = GaugeMetricFamily("pdex_job_units_open", "Units of work (export chunks, match batches) not yet done",
                              labels=["kind", "state"])
    unit_seconds = HistogramMetricFamily(
        "pdex_job_unit_duration_seconds", "Time a worker took over its last attempt at a unit of work "
        "(an export chunk, a match batch)", labels=["kind"])
    finished = CounterMetricFamily("pdex_jobs_finished", "Finished jobs by kind and outcome",
                                   labels=["kind", "outcome"])
    within = CounterMetricFamily("pdex_jobs_within_deadline", "Completed jobs that finished by their deadline",
                                 labels=["kind"])
    fulfil = HistogramMetricFamily("pdex_job_fulfilment_seconds", "Time from request to completion",
                                   labels=["kind"])
    near = GaugeMetricFamily("pdex_jobs_near_deadline", "Open jobs due within JOB_DEADLINE_WARNING_HOURS or overdue",
                             labels=["kind"])
    recent = settings.METRICS_SERVICE_LEVEL_DAYS
    success = GaugeMetricFamily("pdex_job_success_ratio", f"Completed / (completed + failed), last {recent} days",
                                labels=["kind"])
    in_time = GaugeMetricFamily("pdex_job_within_deadline_ratio",
                                f"Share of completed jobs within their deadline, last {recent} days", labels=["kind"])
    mean = GaugeMetricFamily("pdex_job_fulfilment_mean_seconds", f"Mean time to fulfil, last {recent} days",
                             labels=["kind"])
    for kind in kinds():
        label = servicelevels.kind_label(kind)
        table, unit_table = kind.jobs._meta.db_table, kind.units._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT status, priority, count(*) FROM {table} GROUP BY status, priority")  # noqa: S608
            for status, priority, count in cursor.fetchall():
                jobs.add_metric([label, status, AsyncJob.Priority(priority).label], count)
            cursor.execute(f"SELECT status, count(*) FROM {unit_table} WHERE status IN (%s, %s) GROUP BY status",  # noqa: S608
                           [WorkUnit.Status.PENDING, WorkUnit.Status.RUNNING])
            open_units = dict(cursor.fetchall())
            for state in (WorkUnit.Status.PENDING, WorkUnit.Status.RUNNING):
                units.add_metric([label, state], open_units.get(state, 0))
            seconds = "EXTRACT(EPOCH FROM finished_at - started_at)"
            cursor.execute(f"SELECT {histogram_sql(seconds, UNIT_BUCKETS)} FROM {unit_table} "  # noqa: S608
                           "WHERE status = %s AND started_at IS NOT NULL AND finished_at IS NOT NULL",
                           [WorkUnit.Status.DONE])
            buckets, total = _histogram_row(cursor.fetchone(), UNIT_BUCKETS)
            unit_seconds.add_metric([label], buckets, total)
            cursor.execute(f"SELECT status, count(*) FROM {table} WHERE status IN (%s, %s, %s) GROUP BY status",  # noqa: S608
                           [AsyncJob.Status.COMPLETED, AsyncJob.Status.FAILED, AsyncJob.Status.CANCELLED])
            ends = dict(cursor.fetchall())
            for outcome in (AsyncJob.Status.COMPLETED, AsyncJob.Status.FAILED, AsyncJob.Status.CANCELLED):
                finished.add_metric([label, outcome], ends.get(outcome, 0))
            seconds = "EXTRACT(EPOCH FROM finished_at - created_at)"
            cursor.execute(f"SELECT {histogram_sql(seconds, FULFILMENT_BUCKETS)}, "  # noqa: S608
                           f"count(*) FILTER (WHERE finished_at <= deadline) FROM {table} "
                           "WHERE status = %s AND finished_at IS NOT NULL", [AsyncJob.Status.COMPLETED])
            row = cursor.fetchone()
            buckets, total = _histogram_row(row, FULFILMENT_BUCKETS)
            fulfil.add_metric([label], buckets, total)
            within.add_metric([label], row[-1])
        near.add_metric([label], servicelevels.near_deadline(kind).count())
        figures = servicelevels.fulfilment(kind, since=_days_ago(recent))
        for family, value in ((success, figures.success_rate), (in_time, figures.within_deadline_share),
                              (mean, figures.mean_seconds)):
            if value is not None:
                family.add_metric([label], value)
    return [jobs, units, unit_seconds, finished, within, fulfil, near, success, in_time, mean]


def _days_ago(days: int) -> datetime:
    return timezone.now() - timedelta(days=days)


def queue_families() -> Iterable[Metric]:
    """Messages waiting in each of our Celery queues (Redis list lengths; config/queues.py names them)."""
    depth = GaugeMetricFamily("pdex_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        for kind, name in settings.QUEUE_NAMES.items():
            depth.add_metric([kind], client.llen(name))
    except redis.RedisError as exc:
        log.warning("queue depths unavailable: %s", type(exc).__name__)
        return []
    finally:
        client.close()
    return [depth]


class ScrapeTimeCollector:
    """Every family computed when Prometheus scrapes: ours and the upper apps' (`register`)."""

    def collect(self) -> Iterable[Metric]:
        for collect in (job_families, queue_families, *collectors()):
            yield from collect()


def registry() -> CollectorRegistry:
    """The web processes' events (summed over every process when in multiprocess mode) and the rest."""
    found = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        MultiProcessCollector(found, path=directory)
    else:
        for metric in (REQUEST_SECONDS, TOKEN_REQUESTS):
            found.register(_Forward(metric))
    found.register(ScrapeTimeCollector())
    return found


class _Forward:
    """One of this process's metrics in another registry (single-process mode)."""

    def __init__(self, metric):
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return self.metric.collect()


# --- the endpoint --------------------------------------------------------------------------------

def allowed(request: HttpRequest) -> bool:
    """With METRICS_TOKEN set, only `Authorization: Bearer <METRICS_TOKEN>`; without, only a scraper on one
    of METRICS_ALLOWED_NETWORKS (by the connection's address, never a forwarded header)."""
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        return sent.startswith("Bearer ") and hmac.compare_digest(sent[len("Bearer "):].encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in settings.METRICS_ALLOWED_NETWORKS)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return JsonResponse({"error": "forbidden", "detail": "metrics need METRICS_TOKEN or an allowed network"},
                            status=403)
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)

