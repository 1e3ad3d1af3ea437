"""The job engine's claim on a large backlog: its plan (EXPLAIN ANALYZE) and how long a claim takes.

`make explain-claim` builds, in a database of its own, 40 running exports of 25 partners with
`--units` pending chunks in all (one partner's export holds 80% of them, thousands more are done), a few
chunks running under live leases, then prints the plan of the claim statement (pdex.jobs.engine.claim)
and the time of `--claims` claims in a row, each in a transaction rolled back.
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

import django  # noqa: E402

django.setup()

from benchkit import recreate_database  # noqa: E402


def build(units: int) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from exports.models import ExportJob
    from pdex.models import Partner

    partners = Partner.objects.bulk_create([Partner(name=f"Plan {n}", status="active") for n in range(25)])
    now = timezone.now()
    jobs = ExportJob.objects.bulk_create([
        ExportJob(partner=partners[n % 25], kind=ExportJob.Kind.DAVINCI, request_url="x", status="running",
                  priority=1 if n == 39 else 0, deadline=now + timedelta(days=7, minutes=n)) for n in range(40)])
    big = int(units * 0.8)
    sizes = [big] + [max((units - big) // 39, 1)] * 39
    with connection.cursor() as cursor:
        for job, size in zip(jobs, sizes, strict=True):
            # Half as many again are done already: the claim's probe must skip them, not read them.
            cursor.execute(
                """INSERT INTO exports_exportchunk (job_id, sequence, status, attempts, lease_owner, error,
                                                    resource_type, member_ids, regular_member_ids, refs, parts,
                                                    count, size)
                   SELECT %s, n, CASE WHEN n < %s THEN 'done' ELSE 'pending' END, 0, '', '', 'Encounter',
                          '{}', '{}', '{}', 0, 0, 0
                     FROM generate_series(0, %s - 1) n""", [job.id, size // 2, size + size // 2])
        cursor.execute("""UPDATE exports_exportchunk SET status = 'running', lease_expires = now() + interval '2 min',
                                 attempts = 1, started_at = now()
                           WHERE id IN (SELECT id FROM exports_exportchunk WHERE status = 'pending' LIMIT 8)""")
        cursor.execute("ANALYZE exports_exportchunk; ANALYZE exports_exportjob")
        cursor.execute("SELECT status, count(*) FROM exports_exportchunk GROUP BY status ORDER BY status")
        print("chunks:", ", ".join(f"{status} {count:,}" for status, count in cursor.fetchall()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=50_000, help="pending chunks in all (default 50,000)")
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--database", default="pdex_explain_claim")
    args = parser.parse_args()
    recreate_database(args.database)

    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from exports.kind import EXPORT
    from pdex.jobs import engine

    call_command("migrate", verbosity=0)
    build(args.units)
    statement = engine.claim_statement(EXPORT)
    values = engine.claim_parameters(owner="explain", now=timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, values)
        print("\n".join(row[0] for row in cursor.fetchall()))
        transaction.set_rollback(True)
    began = time.perf_counter()
    for _ in range(args.claims):
        with transaction.atomic():
            engine.claim(EXPORT, "explain")
            transaction.set_rollback(True)
    elapsed = (time.perf_counter() - began) / args.claims
    print(f"claim: {1000 * elapsed:.2f} ms each over {args.claims} claims (statement, fetch of the unit and its job)")


if __name__ == "__main__":
    main()
