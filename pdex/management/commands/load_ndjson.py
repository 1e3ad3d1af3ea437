"""`manage.py load_ndjson PATH…`: load FHIR NDJSON(.gz) files or folders into the member data store."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pdex import ingest
from pdex.extract import SOURCE_FORMATS


class Command(BaseCommand):
    help = "Load .ndjson / .ndjson.gz files (or folders of them) into the member data store; idempotent."

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="+", help="files or folders")
        parser.add_argument("--no-validate", action="store_true",
                            help="skip fhir.resources validation (trusted input; ~4x faster)")
        parser.add_argument("--workers", type=int, default=None,
                            help="parse/validate processes (default: CPU count, up to 8)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
        parser.add_argument("--source-format", default="", choices=["", *SOURCE_FORMATS],
                            help="what the data was made from (PDex ProvenancePayerDataSource code); exports name "
                                 "it in their transmitter Provenance")

    def handle(self, *args, paths: list[str], no_validate: bool, workers: int | None, no_progress: bool,
               source_format: str = "", **options) -> None:
        try:
            report = ingest.load_paths(paths, validate=not no_validate, workers=workers,
                                       progress=False if no_progress else None, source_format=source_format)
        except FileNotFoundError as exc:
            raise CommandError(f"no such file or folder: {exc}") from exc
        if report.bad:
            self.stderr.write(ingest.bad_lines_text(report))
        self.stdout.write(report.table(ingest.store_counts()))
