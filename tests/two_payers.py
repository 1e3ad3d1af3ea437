"""Two payers for end-to-end tests of the requesting side: the old plan as a live instance of its own (its own
database, web on its own port, its own Celery worker and settings), the new plan as this test run (the test
database, live_server, `celery_worker_process`).

The old plan ("A") loads the repository's sample/ members and payer data. The new plan ("B") enrolls some of
A's members under ids, member numbers and a member-id system of its own, with the old cards A issued them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import requests
from django.conf import settings
from django.db import connection

from config import queues
from config.embedded import recreate_database, settings_database_url

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"

OLD_PLAN = {"PAYER_NAME": "Old Plan Health", "PAYER_NPI": "1234567893", "PAYER_ORGANIZATION_ID": "payer-old-plan",
            "MEMBER_ID_SYSTEM": "https://old-plan.example.org/fhir/memberid",
            "MEMBER_UMB_SYSTEM": "https://old-plan.example.org/fhir/umb"}
NEW_PLAN = {"PAYER_NAME": "New Plan Health", "PAYER_NPI": "1999999999", "PAYER_ORGANIZATION_ID": "payer-new-plan",
            "MEMBER_ID_SYSTEM": "https://new-plan.example.org/fhir/memberid",
            "MEMBER_UMB_SYSTEM": "https://new-plan.example.org/fhir/umb"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, *, seconds: float = 180, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class OldPayer:
    """Payer A: a database, a gunicorn web process and a Celery worker, each with A's settings."""

    def __init__(self, tmp: Path, *, chunk_members: int = 2):
        base_settings = connection.settings_dict
        self.database = f"{base_settings['NAME']}_old_plan"
        recreate_database(base_settings, self.database)
        self.database_url = settings_database_url({**base_settings, "NAME": self.database})
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.fhir_base = f"{self.base}/fhir"
        self.queue = f"old-plan-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, **OLD_PLAN,
                    "DATABASE_URL": self.database_url, "REDIS_URL": settings.REDIS_URL, "CELERY_QUEUE": self.queue,
                    "CACHE_KEY_PREFIX": self.queue, "FHIR_BASE_URL": self.fhir_base,
                    "EXPORT_STORAGE_URL": f"file://{tmp}/old-plan-exports", "JWKS_ALLOW_HTTP": "true",
                    "STATUS_RETRY_AFTER_SECONDS": "1", "EXPORT_CHUNK_MEMBERS": str(chunk_members),
                    "DB_CONN_MAX_AGE": "0", "LOG_LEVEL": "WARNING"}
        self.processes: list[subprocess.Popen] = []
        self.logs = tmp / f"old-plan-{self.port}"
        self.logs.mkdir(parents=True, exist_ok=True)

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def prepare(self) -> OldPayer:
        self.manage("migrate", "--noinput", "-v0")
        self.manage("load_ndjson", str(SAMPLE), "--no-progress", "--workers", "1")
        self.manage("synthesize_payer_data", "--seed", "42")
        return self

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start(self) -> OldPayer:
        self._spawn("web", [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                            "--bind", f"127.0.0.1:{self.port}",
                            "--workers", "2", "--threads", "4", "--timeout", "120"])
        self._spawn("worker", [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q",
                               queues.worker_queues(self.queue), "-c", "2", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-l", "warning", "-n", f"{self.queue}@%h"])

        def ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"old plan process stopped:\n{self.log_tail()}")
            try:
                return requests.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, "the old plan's web to answer", seconds=90)
        return self

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.logs.glob("*.log"))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        base = connection.settings_dict
        params = {"host": base.get("HOST") or None, "port": base.get("PORT") or None, "user": base.get("USER") or None,
                  "password": base.get("PASSWORD") or None, "dbname": "postgres"}
        with psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def sql(self, query: str, params: Any = ()) -> list[tuple]:
        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def approve_partners(self) -> int:
        """What A's admin does for a registration without a trusted software statement: approve it, with the
        data-sharing agreement on file."""
        return len(self.sql("UPDATE pdex_partner SET status = 'active', agreement_date = current_date"
                            " WHERE status = 'pending' RETURNING id"))


@dataclass(frozen=True)
class OldMember:
    """One of A's members as its store holds them, and what its old card says."""

    fhir_id: str
    member_number: str
    subscriber_id: str
    patient: dict
    sensitive: int  # how many of its resources A tags sensitive


def old_members(old: OldPayer) -> list[OldMember]:
    rows = old.sql("""
        SELECT m.fhir_id, m.member_number, m.subscriber_id, p.body,
               (SELECT count(*) FROM pdex_resource r WHERE r.member_id = m.id AND r.sensitive)
          FROM pdex_member m JOIN pdex_resource p ON p.resource_type = 'Patient' AND p.fhir_id = m.fhir_id
         ORDER BY m.fhir_id""")
    return [OldMember(*row) for row in rows]
