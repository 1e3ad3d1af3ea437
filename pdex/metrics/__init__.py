"""`/metrics` in Prometheus format (docs/operations.md): what the web processes saw, and what PostgreSQL knows.

Two sources, each where it is correct however many processes and machines run:

- **Events in the web processes** (request latency by route and status, token requests by outcome):
  prometheus-client counters and histograms in its multiprocess mode, one file per gunicorn worker under
  PROMETHEUS_MULTIPROC_DIR, summed at scrape time, so any worker answering the scrape reports them all.
- **The work of the jobs** (jobs by kind and state, units of work open and their durations, resources and
  bytes exported per type, match outcomes, fulfilment and deadlines) and the queue depths: computed at scrape
  time from PostgreSQL (the rows are the truth: workers on any number of machines record their work there)
  and from Redis. Nothing is counted twice or lost when a worker dies, and workers need no scraping.

Apps above this one add their own families by registering a collector in AppConfig.ready() (`register`); this
module loads no model, so an AppConfig may import it. The scrape-time families and the view: `pdex.metrics.scrape`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from django.http import HttpRequest, HttpResponse
from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric

# Seconds: a request, a unit of work (chunk, batch), a whole job from request to manifest.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FULFILMENT_BUCKETS = (10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 3 * 24 * 3600, 7 * 24 * 3600, 14 * 24 * 3600)

REQUEST_SECONDS = Histogram(
    "pdex_http_request_duration_seconds", "Time to answer a request, by route name (not path) and status",
    ["route", "method", "status"], buckets=REQUEST_BUCKETS)
TOKEN_REQUESTS = Counter(
    "pdex_token_requests", "Token requests at /oauth/token: issued, or refused with the RFC 6749 error code "
    "(the audit trail holds each refusal's detailed reason)", ["outcome", "error"])

Collect = Callable[[], Iterable[Metric]]
_collectors: list[Collect] = []


def register(collect: Collect) -> None:
    """Add the families an upper app computes at scrape time (called from its AppConfig.ready())."""
    if collect not in _collectors:
        _collectors.append(collect)


def count_token_request(*, issued: bool, error: str = "") -> None:
    TOKEN_REQUESTS.labels("issued" if issued else "refused", "" if issued else (error or "unknown")[:40]).inc()


# --- the web's own events ------------------------------------------------------------------------

class RequestMetricsMiddleware:
    """Times every request under its route name (`fhir-group-read`, never `/fhir/Group/abc…`): bounded labels."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        began = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or "unnamed") if match else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        REQUEST_SECONDS.labels(route, method, str(response.status_code)).observe(time.perf_counter() - began)
        return response


_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def collectors() -> list[Collect]:
    return list(_collectors)
