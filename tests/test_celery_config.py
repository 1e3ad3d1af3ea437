"""Celery's reliability settings, on from day one: a killed worker's task is redelivered, never lost."""

import gc

from celery.signals import worker_process_init

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


def test_a_worker_process_keeps_what_it_loaded_out_of_full_collections():
    """A full pass of the cycle collector over Django and the apps took 66–75 ms: a forked worker freezes them."""
    before = gc.get_freeze_count()
    try:
        worker_process_init.send(sender=None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_a_process_has_its_broker_connection_and_queues_before_its_first_nudge():
    """The first nudge of a cold process took 72 ms (connect, backend, declarations): web and workers warm up."""
    from config.celery import warm_broker

    warm_broker()
    with app.producer_or_acquire() as producer:
        declared = producer.connection.declared_entities
        for name in {app.conf.task_default_queue, *(r["queue"] for r in app.conf.task_routes.values())}:
            assert hash(app.amqp.queues[name]) in declared, name


def test_a_broker_that_is_down_at_startup_does_not_stop_the_process(monkeypatch, caplog):
    from config import celery as config_celery

    def unreachable(*args, **kwargs):
        raise ConnectionRefusedError("redis is not up yet")

    monkeypatch.setattr(config_celery.app, "producer_or_acquire", unreachable)
    config_celery.warm_broker()  # no exception
    assert "could not reach the broker" in caplog.text
