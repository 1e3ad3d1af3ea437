#!/usr/bin/env python3
"""Benchmark ingest: load ../shared/data into a fresh database and print resources per second.

    python scripts/bench_ingest.py [--data ../shared/data] [--database pdex_bench] [--workers N] [--multiply 10]

Runs against the same PostgreSQL server as the app (DATABASE_URL or the embedded default) but in its own
database, dropped and re-created each run. Prints five figures: a validated load (fhir.resources R4B in a
process pool), an unvalidated load, a second (idempotent, all-unchanged) load, the same data through the write
API (transaction Bundles of --bundle entries POSTed over HTTP to gunicorn by --clients concurrent clients, each
validated and extracted like the CLI), and — with --multiply — the time synthesize_payer_data takes to make K×
the members in SQL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import database_url, recreate_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_api_figure(data: Path, *, bundle_entries: int, clients: int) -> None:
    """The shared data as transaction Bundles through `POST /fhir` of a gunicorn on this database."""
    import requests

    from pdex import ingest
    from pdex.write import access

    client = access.register_internal_client(f"bench ingest {time.time():.0f}")
    token = access.issue_token(client).token
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING",
           "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir"}
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-ingest-web-", suffix=".log", delete=False)
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                            "--workers", str(clients), "--timeout", "600"], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Booting worker" not in Path(log.name).read_text():
            if time.monotonic() > deadline or web.poll() is not None:
                sys.exit(Path(log.name).read_text()[-3000:])
            time.sleep(0.2)
        bundles, entries = [], []
        for path in ingest.ndjson_files([data]):
            for _, _, text in ingest.read_lines(path):
                resource = json.loads(text)
                entries.append({"resource": resource, "request": {
                    "method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}})
                if len(entries) == bundle_entries:
                    bundles.append(entries)
                    entries = []
        if entries:
            bundles.append(entries)
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
        url = f"http://127.0.0.1:{port}/fhir"

        def post(bundle: list[dict]) -> tuple[int, int]:
            body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": bundle})
            for _attempt in range(3):  # a transaction that lost a lock wait to another is sent again
                response = session.post(url, data=body, timeout=600)
                if response.status_code < 500:
                    break
            return response.status_code, len(bundle)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(post, bundles))
        seconds = time.perf_counter() - started
        stored = sum(n for status, n in answers if status == 200)
        refused = sum(n for status, n in answers if status != 200)
        print(f"{'write API, transactions of ' + str(bundle_entries):<34}{stored:>8} resources {seconds:>7.1f} s "
              f"{stored / seconds:>9,.0f} resources/s ({len(bundles)} Bundles, {clients} clients, "
              f"refused {refused})")
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--database", default="pdex_bench")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--multiply", type=int, default=10,
                        help="also time synthesize_payer_data --multiply K (1 = skip)")
    parser.add_argument("--bundle", type=int, default=500, help="entries per transaction Bundle of the write API")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients (and gunicorn workers)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (the benchmark needs ../shared/data; try --data sample)")

    recreate_database(args.database)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from pdex import ingest
    from pdex.synthesize import synthesize

    call_command("migrate", verbosity=0)
    workers = args.workers or ingest.default_workers()
    print(f"database {args.database}; data {args.data}; {workers} worker process(es); {os.cpu_count()} CPU(s)")

    def timed(label: str, **options) -> None:
        started = time.perf_counter()
        report = ingest.load_paths([args.data], workers=workers, progress=False, **options)
        seconds = time.perf_counter() - started
        total = sum(report.read.values())
        print(f"{label:<34}{total:>8} resources {seconds:>7.1f} s {total / seconds:>9,.0f} resources/s "
              f"(inserted {sum(report.inserted.values())}, unchanged {sum(report.unchanged.values())}, "
              f"bad {len(report.bad)})")

    timed("load, validated (R4B models)", validate=True)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE pdex_resource, pdex_member CASCADE")
    timed("load, not validated", validate=False)
    timed("reload, validated (no changes)", validate=True)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE pdex_resource, pdex_member, pdex_tombstone CASCADE")
    write_api_figure(args.data, bundle_entries=args.bundle, clients=args.clients)
    if args.multiply > 1:
        started = time.perf_counter()
        report = synthesize(seed=42, multiply=args.multiply)
        seconds = time.perf_counter() - started
        print(f"{'synthesize --multiply ' + str(args.multiply):<34}{report.copies:>8} copies    {seconds:>7.1f} s "
              f"{report.copies / seconds:>9,.0f} resources/s")
    print(f"rows in store: {sum(ingest.store_counts().values()):,}")


if __name__ == "__main__":
    main()
