"""`manage.py synthesize_payer_data --seed N [--multiply K]`: deterministic payer data on top of Synthea."""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from pdex import ingest
from pdex.synthesize import synthesize


class Command(BaseCommand):
    help = ("Add Coverage, prior authorizations, sensitivity labels, old/recent history and run-off claims for "
            "every loaded member (same seed and as-of date: same rows); --multiply K makes K× the members.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--multiply", type=int, default=1, help="total copies of every member (10 = 10×)")
        parser.add_argument("--as-of", type=date.fromisoformat, default=None,
                            help="the day statuses and windows are relative to (default: today, UTC)")

    def handle(self, *args, seed: int, multiply: int, as_of: date | None, **options) -> None:
        if multiply < 1:
            raise CommandError("--multiply must be 1 or more")
        report = synthesize(seed=seed, as_of=as_of, multiply=multiply)
        if report.load and report.load.bad:
            self.stderr.write(ingest.bad_lines_text(report.load))
        generated = ", ".join(f"{count} {kind}" for kind, count in sorted(report.generated.items()))
        self.stdout.write(f"{report.members} members: generated {generated}")
        self.stdout.write(f"labelled sensitive: {report.labelled}; run-off claims stamped: {report.runoff}; "
                          f"copies written: {report.copies}")
        self.stdout.write(report.load.table(ingest.store_counts()) if report.load else "")
