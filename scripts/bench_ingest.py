#!/usr/bin/env python3
"""Benchmark ingest: load ../shared/data into a fresh database and print resources per second.

    python scripts/bench_ingest.py [--data ../shared/data] [--database pdex_bench] [--workers N] [--multiply 10]

Runs against the same PostgreSQL server as the app (DATABASE_URL or the embedded default) but in its own
database, dropped and re-created each run. Prints four figures: a validated load (fhir.resources R4B in a
process pool), an unvalidated load, a second (idempotent, all-unchanged) load, and — with --multiply —
the time synthesize_payer_data takes to make K× the members in SQL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import recreate_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--database", default="pdex_bench")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--multiply", type=int, default=10,
                        help="also time synthesize_payer_data --multiply K (1 = skip)")
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
    if args.multiply > 1:
        started = time.perf_counter()
        report = synthesize(seed=42, multiply=args.multiply)
        seconds = time.perf_counter() - started
        print(f"{'synthesize --multiply ' + str(args.multiply):<34}{report.copies:>8} copies    {seconds:>7.1f} s "
              f"{report.copies / seconds:>9,.0f} resources/s")
    print(f"rows in store: {sum(ingest.store_counts().values()):,}")


if __name__ == "__main__":
    main()
