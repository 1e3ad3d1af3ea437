"""The Celery app. The queue only nudges: job state lives in PostgreSQL and every task is idempotent.

A task carries the request id of whatever sent it (a message header set by `before_task_publish`), so the
log lines of a kick-off and of the planning it starts share one id; a worker working on a unit of a job binds
that job's own id again when it claims the unit (pdex.jobs.engine.claim).
"""

import gc
import logging
import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_init

from pdex import logcontext

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

log = logging.getLogger(__name__)

app = Celery("pdex")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

REQUEST_ID_HEADER = "pdex_request_id"


@before_task_publish.connect
def _send_request_id(headers=None, **_) -> None:
    request_id = logcontext.request_id()
    if headers is not None and request_id:
        headers[REQUEST_ID_HEADER] = request_id


@task_prerun.connect
def _bind_request_id(task=None, **_) -> None:
    logcontext.clear()
    request = getattr(task, "request", None)
    request_id = getattr(request, REQUEST_ID_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        REQUEST_ID_HEADER)
    logcontext.bind(request_id=request_id or "", task=getattr(task, "name", ""))


@task_postrun.connect
def _clear_request_id(**_) -> None:
    logcontext.clear()


def warm_broker() -> None:
    """Connect to the broker, load the result backend and declare our queues now, at process start, not in the
    first nudge a process sends: that one took 72 ms here (connection, backend entry points, queue
    declarations), the whole start of a small export when its kick-off met a web process that had not sent one
    yet; a warm nudge takes 1–2 ms. A broker that is down at boot is not fatal: the first nudge connects then."""
    routed = {route["queue"] for route in (app.conf.task_routes or {}).values()}
    try:
        app.backend  # noqa: B018 - loaded for its side effect
        with app.producer_or_acquire() as producer:
            for name in sorted(routed | {app.conf.task_default_queue}):
                producer.maybe_declare(app.amqp.queues[name])
    except Exception:  # the broker may come up after us; only the first nudge is slower then
        log.warning("could not reach the broker at startup; the first nudge will connect", exc_info=True)


@worker_process_init.connect
def _prepare_worker_process(**_) -> None:
    """A forked worker process starts warm: its broker connection made (warm_broker), and what it loaded before
    its first task (Django, the apps: ~128,000 objects) left out of the cycle collector's full passes
    (`gc.freeze`, as the Python docs advise for processes that fork without exec). A full pass over them took
    66–75 ms here, and one landing inside a 0.1 s export chunk held up the whole export."""
    warm_broker()
    gc.freeze()
