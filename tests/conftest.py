"""Shared fixtures: partners with tokens, and a real Celery worker for end-to-end tests.

Tests run against the real PostgreSQL and Redis. Each run uses its own Celery queue, so parallel runs on
one Redis never take each other's tasks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application
from rest_framework.test import APIClient

from config import queues
from config.celery import app as celery_app
from config.embedded import settings_database_url
from pdex.models import Partner
from tests.builders import EXAMPLE_PARTNER_NAME, EXAMPLE_PARTNER_NPI, agreement_signed

ROOT = Path(__file__).resolve().parent.parent
QUEUE = f"pdex-test-{uuid.uuid4().hex[:8]}"
# Caches are built lazily on first use, so this takes effect: counters and replay keys of parallel runs on
# one Redis never meet (two runs' databases both have a partner with pk=1).
settings.CACHES["default"]["KEY_PREFIX"] = QUEUE
# The suite asks for hundreds of tokens and registrations from 127.0.0.1 within minutes: the OAuth rate limits
# are off here, and tests/test_auth_ratelimit.py sets its own.
settings.TOKEN_RATE_PER_CLIENT = settings.TOKEN_RATE_PER_ADDRESS = settings.REGISTER_RATE_PER_ADDRESS = 0
ALL_SCOPES = (
    "system/*.read http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match "
    "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch"
)


@pytest.fixture(scope="session", autouse=True)
def _own_celery_queues():
    """This run's queues (QUEUE.control, QUEUE.export, …), for the tasks it sends and the workers it starts."""
    celery_app.conf.task_default_queue = queues.names(QUEUE)["control"]
    celery_app.conf.task_routes = queues.routes(QUEUE)
    celery_app.amqp.flush_routes()
    yield
    # Nudges sent with no worker listening stay in Redis: take this run's queues away with it.
    with celery_app.connection_for_write() as conn:
        for name in queues.names(QUEUE).values():
            conn.default_channel.queue_purge(name)


@pytest.fixture(scope="session", autouse=True)
def _close_export_stream(django_db_setup):
    """The export writer keeps a COPY connection of its own per process: closed before the test database is
    dropped, which a session still connected to it would block ("being accessed by other users")."""
    yield
    from exports.writer import close_stream_connection

    close_stream_connection()


@pytest.fixture
def make_partner(db):
    """Create an active partner with a DOT application and a data-sharing agreement in force;
    `make_partner(name=…, scopes=…, npi=…, agreement_date=None)`."""
    counter = {"n": 0}

    def make(name: str | None = None, *, scopes: str = ALL_SCOPES, npi: str = "", status: str = "active",
             **fields) -> Partner:
        counter["n"] += 1
        fields.setdefault("agreement_date", agreement_signed())
        name = name or f"Partner {counter['n']} {uuid.uuid4().hex[:6]}"
        application = Application.objects.create(
            name=name, client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        )
        return Partner.objects.create(name=name, application=application, allowed_scopes=scopes,
                                      npi=npi or f"{1000000000 + counter['n']}", status=status, **fields)

    return make


def issue_token(partner: Partner, scopes: str = ALL_SCOPES, *, expires_in: int = 300) -> str:
    """A DOT access token for `partner`, as the token endpoint would issue it."""
    token = AccessToken.objects.create(
        application=partner.application, token=uuid.uuid4().hex + uuid.uuid4().hex, scope=scopes,
        expires=timezone.now() + timedelta(seconds=expires_in),
    )
    return token.token


@pytest.fixture
def partner(make_partner) -> Partner:
    """The requesting plan: the new plan of the spec's examples (their consents and CoverageToLink name it)."""
    return make_partner(EXAMPLE_PARTNER_NAME, npi=EXAMPLE_PARTNER_NPI)


@pytest.fixture
def api_for():
    """`api_for(partner, scopes=…)`: an API client with a token of the given scopes."""

    def make(partner: Partner, scopes: str = ALL_SCOPES) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(partner, scopes)}")
        return client

    return make


@pytest.fixture
def api(partner, api_for) -> APIClient:
    """An API client authenticated as `partner` with every scope."""
    return api_for(partner)


def database_url_for_current_connection() -> str:
    """The URL of the database this test process uses (the test database), for a worker subprocess."""
    return settings_database_url(connection.settings_dict)


class WorkerProcess:
    """A real `celery worker` subprocess on this run's queue, against the test database."""

    def __init__(self, concurrency: int = 2, extra_env: dict[str, str] | None = None, kinds: str = "",
                 beat: bool = False):
        """`kinds`: the queues it consumes (config/queues.py; all by default); `beat`: run the beat schedule
        in it too (the recovery sweep every JOB_SWEEP_SECONDS)."""
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": database_url_for_current_connection(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_QUEUE": QUEUE,
            "CACHE_KEY_PREFIX": QUEUE,
            "EXPORT_STORAGE_URL": settings.EXPORT_STORAGE_URL,
            "DB_CONN_MAX_AGE": "0",
        })
        env.update(extra_env or {})
        self.name = f"{QUEUE}-{uuid.uuid4().hex[:6]}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"celery-{self.name}.log"
        self.log = open(self.log_path, "w")
        extra = ["-B", "-s", str(self.log_path.with_suffix(".beat"))] if beat else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues.worker_queues(QUEUE, kinds),
             "-c", str(concurrency),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
             "-n", f"{self.name}@%h", *extra],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready." in self.log_path.read_text():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"celery worker did not start:\n{self.log_path.read_text()[-3000:]}")

    def child_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children(recursive=True)]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def celery_worker_process(transactional_db):
    """Start a real worker; tests that use it must use `transactional_db` (the worker sees committed rows)."""
    workers: list[WorkerProcess] = []

    def start(**kwargs) -> WorkerProcess:
        worker = WorkerProcess(**kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def fhir_base(live_server, settings):
    """The live server's FHIR base, advertised as such, polled at the fastest pace the status URL allows."""
    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.STATUS_RETRY_AFTER_SECONDS = 1
    return settings.FHIR_BASE_URL


@pytest.fixture
def file_storage(settings, tmp_path):
    """Exports written to a folder of this test alone."""
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
