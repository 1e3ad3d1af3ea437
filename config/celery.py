"""The Celery app. The queue only nudges: job state lives in PostgreSQL and every task is idempotent."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("pdex")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
