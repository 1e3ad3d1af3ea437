#!/usr/bin/env python3
"""Benchmark Patient/$everything: page through the largest member of ../shared/data and print figures.

    python scripts/bench_everything.py [--data ../shared/data] [--database pdex_bench_everything]
                                       [--count 100] [--multiply 10]

Runs against the app's PostgreSQL server (DATABASE_URL or the embedded default) in its own database,
dropped and re-created each run. Loads the data (unvalidated ingest), gives a partner a #sensitive consent
for the member with most resources, then pages through $everything with the same service calls the view
makes (rules SQL → keyset page → Bundle text), following `next` to the end. Prints resources/s and the peak
Python memory (tracemalloc) while paging; with --multiply K it then copies the member's resources K-1 more
times (new ids, same member) and pages again, so the two peaks show whether memory stays flat.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import recreate_database  # noqa: E402


def largest_member():
    from django.db.models import Count

    from pdex.models import Member

    return Member.objects.annotate(n=Count("resources")).order_by("-n").first()


def grant(member):
    """A partner with a #sensitive consent from `member` (everything may be disclosed)."""
    from pdex.models import Partner
    from tests.builders import consent_for

    partner = Partner.objects.create(name="Bench Plan", npi="1999999999", status="active")
    consent_for(member, partner, policy="sensitive")
    return partner


def multiply(member, times: int) -> int:
    """Copy the member's resources `times - 1` more times under new ids; returns the member's row count."""
    from django.db import connection

    with connection.cursor() as cursor:
        for k in range(2, times + 1):
            cursor.execute(
                "INSERT INTO pdex_resource (resource_type, fhir_id, member_id, body, last_updated, service_start,"
                " service_end, sensitive, clinical_status, eob_use, pa_status, pa_status_changed, pa_period_end,"
                " pa_drug, refs, ingested_at)"
                " SELECT resource_type, fhir_id || %(suffix)s, member_id,"
                " jsonb_set(body, '{id}', to_jsonb(fhir_id || %(suffix)s)), last_updated, service_start,"
                " service_end, sensitive, clinical_status, eob_use, pa_status, pa_status_changed, pa_period_end,"
                " pa_drug, refs, now() FROM pdex_resource"
                " WHERE member_id = %(member)s AND resource_type <> 'Patient' AND fhir_id NOT LIKE '%%-x%%'",
                {"suffix": f"-x{k}", "member": member.pk})
        cursor.execute("SELECT count(*) FROM pdex_resource WHERE member_id = %s", [member.pk])
        return cursor.fetchone()[0]


def page_through(partner, member, count: int) -> tuple[int, int, float, int]:
    """(resources, pages, seconds, peak bytes) of one full pass through $everything."""
    from exports.retrieval import everything

    access = everything.MemberAccess(member=member, decision=everything.decision_for(member, partner))
    query: dict[str, list[str]] = {"_count": [str(count)]}
    resources = pages = 0
    tracemalloc.start()
    started = time.perf_counter()
    while True:
        params = everything.parse_everything_params(query=query)
        page = everything.everything_page(access, params, path=f"/Patient/{member.fhir_id}/$everything",
                                          granted_scopes=["system/*.read"])
        text = everything.bundle_text(page)
        resources += len(page.matches)
        pages += 1
        del text
        if not page.next_url:
            break
        query = {k: v for k, v in parse_qs(urlsplit(page.next_url).query).items()}
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return resources, pages, seconds, peak


def report(label: str, figures: tuple[int, int, float, int], total_rows: int) -> None:
    resources, pages, seconds, peak = figures
    print(f"{label:>4}: member rows {total_rows:>6}  returned {resources:>6} in {pages:>4} pages  "
          f"{seconds:6.2f} s  {resources / seconds:8.0f} resources/s  peak Python memory {peak / 1e6:6.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--database", default="pdex_bench_everything")
    parser.add_argument("--count", type=int, default=100, help="_count (page size)")
    parser.add_argument("--multiply", type=int, default=10, help="repeat with the member's data × K")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (the benchmark needs ../shared/data; try --data sample)")

    recreate_database(args.database)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from pdex import ingest

    settings.EXPORT_WINDOW_MODE = "cap"
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    ingest.load_paths(sorted(args.data.glob("*.ndjson.gz")), validate=False)
    print(f"loaded {args.data} in {time.perf_counter() - started:.1f} s")
    member = largest_member()
    partner = grant(member)
    rows = multiply(member, 1)
    print(f"largest member Patient/{member.fhir_id}: {rows} resources in the store; _count={args.count}")
    report("×1", page_through(partner, member, args.count), rows)
    if args.multiply > 1:
        rows = multiply(member, args.multiply)
        report(f"×{args.multiply}", page_through(partner, member, args.count), rows)


if __name__ == "__main__":
    main()
