"""The Celery app. The queue only nudges: job state lives in PostgreSQL and every task is idempotent.

A task carries the request id of whatever sent it (a message header set by `before_task_publish`), so the
log lines of a kick-off and of the planning it starts share one id; a worker working on a unit of a job binds
that job's own id again when it claims the unit (pdex.jobs.engine.claim).
"""

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun

from pdex import logcontext

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

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
