"""gunicorn's settings for the web process: `gunicorn -c config/gunicorn.py config.wsgi` (Procfile, Dockerfile,
docker-compose, the scripts and tests that start web). Command-line flags still override these.

- **Keep-alive longer than any Retry-After we send.** Status polls wait `STATUS_RETRY_AFTER_SECONDS` (2 s) and the
  member-match budget's 429 at most a window; a client that waits exactly Retry-After and reuses its connection
  must find it open. gunicorn's default of 2 s closed it at the same moment the poll arrived (connection resets).
  75 s is also longer than the usual load balancer idle timeout (60 s), so the balancer, not gunicorn, closes
  idle connections first (docs/deployment.md). The gthread worker parks idle connections in its poller, so a
  kept-alive connection holds no thread.
- **Limits that leave the answer to Django**, which answers in JSON: the request line and header fields at
  gunicorn's maximum (8190 bytes), so a long search URL reaches Django. What gunicorn must still refuse itself
  (a request line over 8 KiB, a malformed request) is answered as JSON too: `write_error` below replaces
  gunicorn's HTML error page. Before the request line is parsed nobody knows the path, so that body is a FHIR
  OperationOutcome (served as application/json), which every client of ours reads.
- **The loaded application outside the cycle collector's full passes** (`post_worker_init`: `gc.freeze`): a full
  pass over Django and the apps took 66–75 ms here, a pause in whichever request met it.
"""

from __future__ import annotations

import gc
import json
import os

from gunicorn import util

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))
keepalive = int(os.environ.get("WEB_KEEPALIVE_SECONDS", "75"))
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # the Procfile passes --access-logfile -


def post_worker_init(worker) -> None:
    """After the worker has loaded the application: everything loaded so far stays (gc.freeze)."""
    gc.freeze()


def write_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (414, 431, 400 for a malformed request) as an OperationOutcome, never HTML."""
    body = json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "too-long" if status_int in (414, 431) else "structure",
         "diagnostics": f"{reason}: {mesg}"[:300]}]}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


util.write_error = write_error
