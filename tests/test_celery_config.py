"""Celery's reliability settings, on from day one: a killed worker's task is redelivered, never lost."""

from config.celery import app


def test_tasks_are_acknowledged_late_and_rejected_when_the_worker_is_lost():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_visibility_timeout_outlasts_the_longest_task():
    # Shorter, and Redis would hand a still-running task to a second worker.
    assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit


def test_json_is_the_only_serializer():
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]


def test_broker_is_redis():
    assert app.conf.broker_url.startswith(("redis://", "rediss://", "redis+socket://"))
