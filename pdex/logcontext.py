"""What every log line carries besides its message: the request id, and the job a worker is working on.

A request's id comes from its `X-Request-ID` header (or is made up) in `RequestIdMiddleware`; Celery tasks
the request sends carry it in a message header (config/celery.py's signals), and a job keeps it on its row
(`AsyncJob.request_id`), so the engine binds it again whenever a worker claims one of the job's units —
whichever message woke the worker. `ContextFilter` puts the bound values on every log record, and the JSON
formatter (python-json-logger, config/settings.py LOGGING) writes them out.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# Accepted as given when it looks like an id (a proxy's, a partner's); anything else is replaced.
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
_context: ContextVar[dict[str, str] | None] = ContextVar("pdex_log_context", default=None)
log = logging.getLogger("pdex.request")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The caller's id when it is a plain token of 8–64 characters, else a fresh one."""
    return value if value and _VALID.match(value) else new_request_id()


def bind(**values: str | None) -> None:
    """Add (or, with an empty value, drop) fields of this context's log lines."""
    current = dict(_context.get() or {})
    for name, value in values.items():
        if value:
            current[name] = str(value)
        else:
            current.pop(name, None)
    _context.set(current)


def clear() -> None:
    _context.set(None)


def current() -> dict[str, str]:
    return dict(_context.get() or {})


def request_id() -> str:
    return (_context.get() or {}).get("request_id", "")


class ContextFilter(logging.Filter):
    """Puts `request_id` on every record (empty when there is none), and `job`/`task` in a worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        record.request_id = context.get("request_id", "")
        for name, value in context.items():
            if name != "request_id" and not hasattr(record, name):
                setattr(record, name, value)
        return True


class RequestIdMiddleware:
    """Binds the request id for the request's log lines, answers it in `X-Request-ID`, logs one line per request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        clear()  # a thread serves one request after another: nothing of the last one carries over
        rid = accept_request_id(request.headers.get(HEADER))
        request.request_id = rid
        bind(request_id=rid)
        began = time.perf_counter()
        response = self.get_response(request)
        response[HEADER] = rid
        match = getattr(request, "resolver_match", None)
        log.info("%s %s %s", request.method, request.path, response.status_code, extra={
            "method": request.method, "route": match.view_name if match else "", "status": response.status_code,
            "duration_ms": round(1000 * (time.perf_counter() - began), 1)})
        return response
