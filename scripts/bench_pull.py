#!/usr/bin/env python3
"""Benchmark the requesting side: a pull of every member of the shared data ×10, match to last ingested row.

    python scripts/bench_pull.py [--data ../shared/data] [--multiply 10] [--concurrency 2]

Two payers on this machine, each in a database of its own (dropped and re-created each run): payer A loads
the data, adds the payer data and multiplies it (synthesize_payer_data --multiply), and serves it (gunicorn
and a Celery worker, its own queue); payer B enrolls every one of A's members under its own ids with a
consent (every fifth `#regular`), registers with A by dynamic registration, and pulls with a real worker of
its own (the puller) while this script samples the puller's memory (psutil RSS). It prints members and
resources per second from the kick-off of the match to the last ingested row, the time of each stage, and
the puller's peak memory.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import Process as BenchProcess  # noqa: E402
from benchkit import database_url, recreate_database  # noqa: E402
from demo_two_payers import new_card  # noqa: E402 - B's own Coverage of a new member, as the demo makes it

from config import queues  # noqa: E402

RUN = uuid.uuid4().hex[:8]
OLD = {"PAYER_NAME": "Old Plan Health", "PAYER_NPI": "1234567893", "PAYER_ORGANIZATION_ID": "payer-old-plan",
       "MEMBER_ID_SYSTEM": "https://old-plan.example.org/fhir/memberid"}
NEW = {"PAYER_NAME": "New Plan Health", "PAYER_NPI": "1999999999", "PAYER_ORGANIZATION_ID": "payer-new-plan",
       "MEMBER_ID_SYSTEM": "https://new-plan.example.org/fhir/memberid", "CELERY_QUEUE": f"bench-pull-b-{RUN}",
       "CACHE_KEY_PREFIX": f"bench-pull-b-{RUN}"}
os.environ.update(NEW)  # this process is payer B


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process(BenchProcess):
    """A payer's subprocess (benchkit's), its memory read as (all its processes summed, the largest one)."""

    def rss(self) -> tuple[int, int]:
        sizes = self.sizes().values()
        return sum(sizes), max(sizes, default=0)


def worker(env: dict[str, str], concurrency: int, name: str) -> Process:
    process = Process([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q",
                       queues.worker_queues(env["CELERY_QUEUE"]), "-c", str(concurrency), "--without-gossip",
                       "--without-mingle", "--without-heartbeat", "-l", "info", "-n", f"{env['CELERY_QUEUE']}@%h"],
                      env, name)
    process.wait_for("ready.")
    return process


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def old_plan(data: Path, multiply: int, concurrency: int, storage: Path) -> tuple[dict[str, str], list[Process]]:
    """Payer A: its database loaded, multiplied, and served."""
    from django.conf import settings

    from config.embedded import recreate_database as recreate
    from config.embedded import settings_database_url

    db = settings.DATABASES["default"]
    recreate(db, "pdex_bench_pull_a")
    url = settings_database_url({**db, "NAME": "pdex_bench_pull_a"})
    port = free_port()
    env = {**os.environ, **OLD, "DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL,
           "CELERY_QUEUE": f"bench-pull-a-{RUN}", "CACHE_KEY_PREFIX": f"bench-pull-a-{RUN}",
           "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir", "EXPORT_STORAGE_URL": f"file://{storage}",
           "JWKS_ALLOW_HTTP": "true", "STATUS_RETRY_AFTER_SECONDS": "1", "LOG_LEVEL": "WARNING",
           # The whole multiplied population in one bulk match: the failure budget (docs/matching.md) holds it.
           "MEMBER_MATCH_MAX_FAILURES": "1000000"}
    print(f"payer A: loading {data} and multiplying ×{multiply} …", flush=True)
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "load_ndjson", str(data), "--no-progress")
    manage(env, "synthesize_payer_data", "--seed", "42", "--multiply", str(multiply))
    web = Process([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                   "--bind", f"127.0.0.1:{port}", "--workers",
                   "2", "--threads", "4", "--timeout", "300"], env, "a-web")
    web.wait_for("Booting worker")
    return env, [web, worker(env, concurrency, "a-worker")]


def enroll(old_url: str, regular_every: int = 5) -> int:
    """Every one of A's members joins B (B's ids and member numbers), each with a consent for A."""
    import psycopg
    from django.utils import timezone

    from pdex.ingest import load_resources
    from pdex.models import Member
    from requesting import consents
    from requesting.consent_resource import ConsentTerms, OldCard
    from requesting.models import PreviousPayer

    with psycopg.connect(old_url.replace("postgres://", "postgresql://", 1)) as conn:
        rows = conn.execute("""SELECT m.member_number, m.subscriber_id, p.body FROM pdex_member m
                               JOIN pdex_resource p ON p.resource_type = 'Patient' AND p.fhir_id = m.fhir_id
                               WHERE m.member_number IS NOT NULL ORDER BY m.fhir_id""").fetchall()
    today = timezone.localdate()
    patients = [{**{k: v for k, v in body.items() if k in ("name", "birthDate", "gender", "address")},
                 "resourceType": "Patient", "id": f"np-{n:06d}"} for n, (_, _, body) in enumerate(rows)]
    cards = [new_card(f"np-{n:06d}", f"NP{n:06d}", today) for n in range(len(rows))]
    load_resources(patients + cards, source="enrollment", validate=False)
    payer = PreviousPayer.objects.get()
    members = {m.fhir_id: m for m in Member.objects.all()}
    for n, (number, subscriber, _) in enumerate(rows):
        member = members[f"np-{n:06d}"]
        consents.record_consent(member=member, payer=payer, scenario="enrollment", coverage_start=today,
                                terms=ConsentTerms("regular" if n % regular_every == 0 else "sensitive", today,
                                                   today + timedelta(days=90)),
                                old_card=OldCard(member_id=number, subscriber_id=subscriber), via="bench",
                                actor="bench")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--multiply", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data}")
    import django

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        recreate_database("pdex_bench_pull_b")
        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        processes: list[Process] = []
        try:
            env_a, processes = old_plan(args.data, args.multiply, args.concurrency, Path(tmp) / "exports")
            call_command("migrate", "--noinput", verbosity=0)
            web_port = free_port()
            settings.FHIR_BASE_URL = f"http://127.0.0.1:{web_port}/fhir"
            env_b = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
                     "FHIR_BASE_URL": settings.FHIR_BASE_URL, "P2P_DOWNLOAD_DIR": f"{tmp}/spool",
                     "P2P_DEFAULT_RETRY_SECONDS": "1", "LOG_LEVEL": "WARNING"}
            web_b = Process([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                             "--bind", f"127.0.0.1:{web_port}",
                             "--workers", "1", "--threads", "2"], env_b, "b-web")
            web_b.wait_for("Booting worker")
            processes.append(web_b)

            from requesting import registry
            from requesting.models import PullJob
            from requesting.pull.start import start_pulls

            payer = registry.add_previous_payer(name=OLD["PAYER_NAME"], npi=OLD["PAYER_NPI"],
                                                fhir_base_url=env_a["FHIR_BASE_URL"])
            registry.register_dynamically(payer, actor="bench")
            # A's admin approves B and files its data-sharing agreement
            _sql(env_a["DATABASE_URL"], "UPDATE pdex_partner SET status = 'active', agreement_date = current_date")
            assert registry.check_connection(payer) == "ok"
            members = enroll(env_a["DATABASE_URL"])
            print(f"payer B: {members} new members enrolled with a consent for A; pulling …", flush=True)
            puller = worker(env_b, args.concurrency, "b-puller")
            processes.append(puller)
            peak = [0, 0]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    total, largest = puller.rss()
                    peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.monotonic()
            [job] = start_pulls(payer, trigger=PullJob.Trigger.COMMAND)
            stages = {}
            while True:
                job.refresh_from_db()
                stages.setdefault(job.stage, time.monotonic() - began)
                if job.is_finished:
                    break
                time.sleep(0.2)
            seconds = time.monotonic() - began
            done.set()
            sampler.join()
            report(job, seconds, stages, peak)
        finally:
            for process in reversed(processes):
                process.stop()


def _sql(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(statement)


def report(job, seconds: float, stages: dict[str, float], peak: list[int]) -> None:
    if job.status != job.Status.COMPLETED:
        sys.exit(f"the pull ended {job.status}: {job.error}")
    received, ingested = sum(job.received.values()), sum(job.ingested.values())
    order = ["match", "export", "download", "provenance", "done"]
    marks = [(name, stages[name]) for name in order if name in stages]
    spans = ", ".join(f"{name} {(marks[i + 1][1] if i + 1 < len(marks) else seconds) - at:.1f} s"
                      for i, (name, at) in enumerate(marks[:-1]))
    print(f"""
Pull of {job.members} members ({job.matched} matched, {job.no_match} not, {job.consent_constrained} constrained)
  resources received {received}, ingested {ingested} (+ as many receipt Provenance), validation failures \
{sum(job.invalid.values())}
  {seconds:.1f} s from the match kick-off to the last ingested row: {spans}
  {job.members / seconds:.1f} members/s, {received / seconds:.0f} resources/s
  puller peak memory: {peak[0] / 2**20:.0f} MB all processes, {peak[1] / 2**20:.0f} MB the largest""", flush=True)


if __name__ == "__main__":
    main()
