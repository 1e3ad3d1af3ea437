#!/usr/bin/env python3
"""Benchmark the bulk export against a raw PostgreSQL COPY of the same rows, at ×1 and ×10 the data.

    python scripts/bench_export.py [--data ../shared/data] [--database pdex_bench_export] [--scales 1,10]
                                   [--concurrency 2]

Runs against the same PostgreSQL and Redis as the app, in a database of its own (dropped and re-created
each run; tests never touch it). It loads ../shared/data, adds the payer data (synthesize_payer_data), and
for each scale (synthesize_payer_data --multiply) exports one match Group of every member through a real
Celery worker on a private queue — kick-off, planning, chunks, finalize — while sampling the worker
processes' memory (psutil RSS). Then it times `COPY (SELECT … the same rows …) TO STDOUT` on one connection
and prints, per scale: resources/s, MB/s, worker peak memory and the export/COPY ratio
(ratio = COPY seconds ÷ export seconds; goal ≥ 0.5; memory at ×10 within 1.2× of ×1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import database_url, recreate_database  # noqa: E402

from config import queues  # noqa: E402

QUEUE = f"bench-export-{uuid.uuid4().hex[:8]}"
os.environ["CELERY_QUEUE"] = QUEUE


class Worker:
    """A `celery worker` subprocess on the bench queue and database."""

    def __init__(self, concurrency: int, storage_url: str):
        from django.conf import settings

        env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
               "CELERY_QUEUE": QUEUE, "EXPORT_STORAGE_URL": storage_url, "LOG_LEVEL": "WARNING"}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-export-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues.worker_queues(QUEUE),
             "-c", str(concurrency),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info", "-n", f"{QUEUE}@%h"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "ready." not in Path(self.log.name).read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text()[-3000:])
            time.sleep(0.2)

    def rss(self) -> tuple[int, int]:
        """(RSS of the worker's processes summed, largest single process)."""
        import psutil

        try:
            procs = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0
        sizes = []
        for proc in procs:
            try:
                sizes.append(proc.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        return sum(sizes), max(sizes, default=0)

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def matched_group(partner, regular_every: int = 5):
    """One match Group of every member; every `regular_every`-th member's consent is #regular."""
    from django.conf import settings

    from consent.decision import NPI_SYSTEM, RECIPIENT_ROLE, REGULAR_POLICY_URI, SENSITIVE_POLICY_URI, SOURCE_ROLE
    from consent.models import Consent
    from matching.models import GroupMember, MemberMatchGroup
    from pdex.models import Member

    uris = {"regular": REGULAR_POLICY_URI, "sensitive": SENSITIVE_POLICY_URI}
    today = date.today()
    period = {"start": str(today - timedelta(days=365)), "end": str(today + timedelta(days=365))}

    def actor(role: tuple[str, str], npi: str) -> dict:
        return {"role": {"coding": [{"system": role[0], "code": role[1]}]},
                "reference": {"identifier": {"system": NPI_SYSTEM, "value": npi}}}

    def consent_resource(policy: str) -> dict:
        return {"resourceType": "Consent", "status": "active", "policy": [{"uri": uris[policy]}],
                "provision": {"type": "permit", "period": period,
                              "actor": [actor(SOURCE_ROLE, settings.PAYER_NPI), actor(RECIPIENT_ROLE, partner.npi)]}}

    members = list(Member.objects.order_by("id").values_list("id", flat=True))
    consents = []
    for n, member_id in enumerate(members):
        policy = "regular" if n % regular_every == 0 else "sensitive"
        consents.append(Consent(member_id=member_id, partner=partner, policy=policy, policy_uri=uris[policy],
                                period_start=today - timedelta(days=365),
                                period_end=today + timedelta(days=365),
                                resource=consent_resource(policy), submitted_via="bench"))
    Consent.objects.bulk_create(consents, batch_size=2000)
    group = MemberMatchGroup.objects.create(partner=partner, code=MemberMatchGroup.Code.MATCH,
                                            resource={"resourceType": "Group"})
    GroupMember.objects.bulk_create([GroupMember(group=group, member_id=m) for m in members], batch_size=2000)
    return group, members


def new_partner():
    from oauth2_provider.models import Application

    from pdex.models import Partner

    name = f"Bench {uuid.uuid4().hex[:6]}"
    application = Application.objects.create(name=name, client_type=Application.CLIENT_CONFIDENTIAL,
                                             authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS)
    return Partner.objects.create(name=name, application=application, npi="1999999999", status="active",
                                  allowed_scopes="system/*.read")


def run_export(worker: Worker, group, partner) -> tuple[float, object, int, int]:
    """Kick off and wait; returns (seconds, job, peak summed RSS, peak single-process RSS)."""
    from django.utils import timezone

    from exports import jobs
    from exports.models import ExportJob
    from exports.params import ExportParams

    started = time.perf_counter()
    job = jobs.start_export(partner=partner, kind=ExportJob.Kind.DAVINCI, group=group,
                            params=ExportParams().job_params(request_time=timezone.now()), request_url="bench")
    peak_total = peak_one = 0
    while True:
        total, one = worker.rss()
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        status = ExportJob.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        if status not in (ExportJob.Status.QUEUED, ExportJob.Status.RUNNING):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    job.refresh_from_db()
    if job.status != ExportJob.Status.COMPLETED:
        raise RuntimeError(f"export ended {job.status}: {job.error}")
    return seconds, job, peak_total, peak_one


def raw_copy(job, member_ids: list[int]) -> tuple[float, int, int]:
    """COPY the same rows (same rules SQL, same consents) TO STDOUT on one connection; (seconds, rows, bytes)."""
    from consent.models import Consent
    from exports import rules
    from exports.models import ExportChunk
    from exports.writer import stream_connection

    regular = set(Consent.objects.filter(partner=job.partner, policy="regular").values_list("member_id", flat=True))
    context = rules.export_context(request_time=job.transaction_time, regular_member_ids=regular)
    refs: set[str] = set()
    for chunk_refs in ExportChunk.objects.filter(job=job).values_list("refs", flat=True):
        refs.update(chunk_refs)
    rows = size = 0
    started = time.perf_counter()
    with stream_connection() as conn, conn.cursor() as cursor:
        for resource_type in rules.EXPORT_TYPES:
            if resource_type in rules.SHARED_TYPES:
                ids = sorted(r.split("/", 1)[1] for r in refs if r.startswith(f"{resource_type}/"))
                sql = ("SELECT body::text FROM pdex_resource WHERE resource_type = %(type)s AND member_id IS NULL"
                       " AND fhir_id = ANY(%(ids)s)")
                params = {"type": resource_type, "ids": ids}
            else:
                sql, params = rules.chunk_query(resource_type, member_ids, context)
            with cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
                for row in copy:
                    rows += 1
                    size += len(row)
    return time.perf_counter() - started, rows, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--database", default="pdex_bench_export")
    parser.add_argument("--scales", default="1,10", help="comma list of multiplies, ascending")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (the benchmark needs ../shared/data)")
    scales = sorted(int(s) for s in args.scales.split(","))

    recreate_database(args.database)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from pdex import ingest
    from pdex.jobs.models import OutputFile
    from pdex.synthesize import synthesize

    # os.environ["CELERY_QUEUE"] above named this run's queues before the settings were read.
    call_command("migrate", verbosity=0)
    ingest.load_paths([args.data], validate=False, progress=False)
    synthesize(seed=42)
    storage = tempfile.mkdtemp(prefix="bench-export-")
    settings.EXPORT_STORAGE_URL = f"file://{storage}"
    print(f"database {args.database}; {args.concurrency} worker process(es); {os.cpu_count()} CPU(s); "
          f"chunk {settings.EXPORT_CHUNK_MEMBERS} members; storage {settings.EXPORT_STORAGE_URL}")
    header = (f"{'scale':>5} {'members':>8} {'resources':>10} {'MB':>8} {'export s':>9} {'res/s':>9} {'MB/s':>7}"
              f" {'COPY s':>7} {'COPY res/s':>10} {'ratio':>6} {'peak RSS MB':>12} {'max proc MB':>12}")
    print(header)
    print("-" * len(header))
    peaks = {}
    current = 1
    for scale in scales:
        if scale > current:
            synthesize(seed=42, multiply=scale)
            current = scale
        partner = new_partner()
        group, members = matched_group(partner)
        worker = Worker(args.concurrency, settings.EXPORT_STORAGE_URL)
        try:
            # A first export warms the cache (and gives the COPY its shared references); the second is timed,
            # between two COPYs of the same rows, so a change of load on the machine hits both sides.
            _, warmup, warm_peak, warm_one = run_export(worker, group, partner)
            before, copy_rows, copy_size = raw_copy(warmup, members)
            seconds, job, peak_total, peak_one = run_export(worker, group, partner)
            after, _, _ = raw_copy(job, members)
        finally:
            worker.stop()
        peak_total, peak_one = max(peak_total, warm_peak), max(peak_one, warm_one)
        copy_seconds = (before + after) / 2
        files = OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT)
        exported = sum(f.count for f in files)
        size = sum(f.size for f in files)
        peaks[scale] = peak_total
        print(f"{scale:>4}× {len(members):>8} {exported:>10} {size / 1e6:>8.1f} {seconds:>9.2f}"
              f" {exported / seconds:>9,.0f} {size / 1e6 / seconds:>7.1f} {copy_seconds:>7.2f}"
              f" {copy_rows / copy_seconds:>10,.0f} {copy_seconds / seconds:>6.2f}"
              f" {peak_total / 2**20:>12.0f} {peak_one / 2**20:>12.0f}", flush=True)
        print(f"      COPY rows {copy_rows:,} ({copy_size / 1e6:.1f} MB); export lines {exported:,} include "
              f"{job.progress_total} transmitter Provenance chunks' worth", flush=True)
    shutil.rmtree(storage, ignore_errors=True)
    if len(scales) > 1:
        low, high = scales[0], scales[-1]
        print(f"memory ×{high} / ×{low}: {peaks[high] / peaks[low]:.2f} (goal ≤ 1.2); ratio goal ≥ 0.5")


if __name__ == "__main__":
    main()
