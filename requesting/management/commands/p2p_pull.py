"""Pull our members' data from one previous payer now, with progress bars for match, export and download.

    python manage.py p2p_pull --payer NPI|name [--full] [--threads 4] [--detach]

Every member whose consent for that payer is valid now, and who is not already in a pull under way, is asked
about: one pull per `_since` the members share (members never pulled get everything; `--full` asks for
everything for all). The pull runs here, its files downloaded `--threads` at a time, through the same engine
steps the workers run (running workers help); `--detach` leaves it to the workers. Running the command again
resumes a pull that was interrupted.
"""

from __future__ import annotations

import re
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q
from tqdm import tqdm

from requesting.models import PreviousPayer, PullJob, PullUnit
from requesting.pull.drive import drive
from requesting.pull.start import IN_PROGRESS, CannotPull, start_pulls

FRACTION = re.compile(r"(\d+)/(\d+)")


class Bars:
    """Three bars per pull: the payer's match and export (from its X-Progress), our downloads (files)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[tuple[str, str], tqdm] = {}

    def bar(self, job: PullJob, name: str) -> tqdm:
        key = (str(job.id), name)
        if key not in self.bars:
            self.bars[key] = tqdm(desc=f"{name:<9}", unit=" step", disable=not self.enabled, leave=True,
                                  file=sys.stderr, position=len(self.bars))
        return self.bars[key]

    def show(self, jobs: list[PullJob]) -> None:
        for job in jobs:
            order = [PullJob.Stage.MATCH, PullJob.Stage.EXPORT, PullJob.Stage.DOWNLOAD, PullJob.Stage.PROVENANCE,
                     PullJob.Stage.DONE]
            reached = order.index(job.stage)
            for name, stage in (("match", PullJob.Stage.MATCH), ("export", PullJob.Stage.EXPORT)):
                bar = self.bar(job, name)
                found = FRACTION.search(job.remote_progress) if job.stage == stage else None
                if reached > order.index(stage):
                    bar.total = bar.total or 1
                    bar.update(bar.total - bar.n)
                elif found:
                    done, total = map(int, found.groups())
                    bar.total = total
                    bar.update(done - bar.n)
                bar.set_postfix_str(job.remote_progress if job.stage == stage else "")
            files = job.units.filter(step=PullUnit.Step.FILE)
            bar = self.bar(job, "download")
            bar.total = files.count() or None
            bar.update(files.filter(status=PullUnit.Status.DONE).count() - bar.n)
            bar.set_postfix_str(f"{sum(files.values_list('ingested', flat=True))} resources in")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class Command(BaseCommand):
    help = "Pull our members' data from one previous payer (match, export, download, validate, ingest)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--payer", required=True, help="the previous payer's NPI or name")
        parser.add_argument("--full", action="store_true", help="ask for everything, not only what changed")
        parser.add_argument("--threads", type=int, default=4, help="units (files) worked on at once here")
        parser.add_argument("--detach", action="store_true", help="start the pull and leave it to the workers")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, payer: str, full: bool, threads: int, detach: bool, no_progress: bool, **options):
        found = PreviousPayer.objects.filter(Q(npi=payer) | Q(name__iexact=payer)).first()
        if found is None:
            raise CommandError(f"no previous payer with NPI or name {payer!r}")
        unfinished = list(PullJob.objects.filter(previous_payer=found, status__in=IN_PROGRESS))
        try:
            jobs = start_pulls(found, trigger=PullJob.Trigger.COMMAND, full=full, actor="p2p_pull")
        except CannotPull as exc:
            raise CommandError(str(exc)) from None
        jobs = unfinished + jobs
        if not jobs:
            self.stdout.write("Nobody to pull: no member has a valid consent for this payer, or all are in a pull.")
            return
        for job in unfinished:
            self.stdout.write(f"resuming pull {job.id} ({job.stage})")
        if detach:
            for job in jobs:
                self.stdout.write(f"pull {job.id}: {job.members} member(s), left to the workers")
            return
        bars = Bars(enabled=not no_progress and sys.stderr.isatty())
        try:
            drive(jobs, threads=threads, on_tick=bars.show)
        finally:
            bars.close()
        for job in jobs:
            self.stdout.write(summary(job))


def summary(job: PullJob) -> str:
    lines = [f"pull {job.id} from {job.previous_payer.name}: {job.status}"
             + (f" — {(job.error or {}).get('issue', [{}])[0].get('diagnostics', '')}" if job.error else ""),
             f"  members: {job.members} asked, {job.matched} matched, {job.no_match} not matched, "
             f"{job.consent_constrained} consent-constrained, {job.revoked} consent ended meanwhile",
             f"  _since: {job.since.isoformat() if job.since else '(everything)'}"]
    for kind in sorted(set(job.received) | set(job.ingested)):
        lines.append(f"  {kind:<22} received {job.received.get(kind, 0):>7}  new or changed "
                     f"{job.ingested.get(kind, 0):>7}  unchanged {job.unchanged.get(kind, 0):>7}  invalid "
                     f"{job.invalid.get(kind, 0):>4}")
    if job.dropped:
        lines.append("  not taken in: " + ", ".join(f"{reason} {n}" for reason, n in sorted(job.dropped.items())))
    return "\n".join(lines)
