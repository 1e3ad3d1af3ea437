#!/usr/bin/env python3
"""Benchmark the bulk export as a partner sees it, against a true raw COPY of the same rows, at ×1, ×10, ×100.

    python scripts/bench_export.py [--data ../shared/data] [--scales 1,10,100] [--concurrency 2] [--port 8120]

One run, one process tree: this script loads ../shared/data into a database of its own (`<db>_bench_export`,
dropped and re-created each run), adds the payer data (synthesize_payer_data), and serves it with gunicorn
and a real Celery worker (its own queue) started as its children. For each scale (synthesize --multiply) it
gives one partner a match Group of every member (every fifth consent #regular), runs one warm-up export,
then measures:

- **raw COPY**: `COPY (SELECT body::text …) TO STDOUT` of exactly the stored rows the export delivers (the rows
  the rules select, collected into a table beforehand), on one connection; the mean of one COPY before and one
  after the export;
- **server**: the export job from its kick-off to `completed` (job row: created_at → finished_at);
- **HTTP**: the client's view — kick-off, polls honouring Retry-After, every manifest file downloaded with 2
  parallel GETs, lines counted against the manifest — from the kick-off request to the last byte;
- **gzip**: every file again with `Accept-Encoding: gzip` (2 parallel GETs): bytes on the wire, lines counted;
- peak RSS of every worker process (planning included), sampled every 20 ms.

It prints resources/s, MB/s, files, both ratios (raw COPY seconds ÷ export seconds) and the goals met.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from benchkit import Process, bench_database, database_url, recreate_database  # noqa: E402

from config import queues  # noqa: E402

RUN = uuid.uuid4().hex[:8]
QUEUE = f"bench-export-{RUN}"
os.environ["CELERY_QUEUE"] = QUEUE
PARALLEL_GETS = 2
MB = 1e6


@dataclass
class ClientRun:
    """What the partner saw: seconds from kick-off to manifest and to last byte, polls, files, lines, bytes."""

    job_id: str
    manifest_seconds: float
    seconds: float
    polls: int
    files: list[dict]
    lines: int
    size: int
    wire: int = 0
    retry_after: list[str] = field(default_factory=list)
    kickoff_seconds: float = 0.0
    poll_times: list[tuple[float, int]] = field(default_factory=list)  # seconds after kick-off, status


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


def new_partner() -> tuple[object, str]:
    """A partner and a bearer token covering the export and every type."""
    from django.utils import timezone
    from oauth2_provider.models import AccessToken, Application

    from pdex.models import Partner

    name = f"Bench {uuid.uuid4().hex[:6]}"
    application = Application.objects.create(name=name, client_type=Application.CLIENT_CONFIDENTIAL,
                                             authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS)
    partner = Partner.objects.create(name=name, application=application, npi="1999999999", status="active",
                                     allowed_scopes="system/*.rs", agreement_date=date.today())
    token = AccessToken.objects.create(application=application, token=uuid.uuid4().hex + uuid.uuid4().hex,
                                       scope="system/*.rs", expires=timezone.now() + timedelta(hours=3))
    return partner, token.token


# --- the client -------------------------------------------------------------------------------------

def download(url: str, token: str, *, gzip: bool) -> tuple[int, int, int]:
    """One manifest file: (lines, bytes of NDJSON, bytes on the wire), streamed, never held whole."""
    import requests

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+ndjson",
               "Accept-Encoding": "gzip" if gzip else "identity"}
    lines = size = wire = 0
    with requests.get(url, headers=headers, stream=True, timeout=600) as response:
        response.raise_for_status()
        inflate = zlib.decompressobj(31) if response.headers.get("Content-Encoding") == "gzip" else None
        for block in response.raw.stream(1 << 20, decode_content=False):
            wire += len(block)
            data = inflate.decompress(block) if inflate is not None else block
            lines += data.count(b"\n")
            size += len(data)
        if inflate is not None:
            tail = inflate.flush()
            lines, size = lines + tail.count(b"\n"), size + len(tail)
    return lines, size, wire


def download_all(files: list[dict], token: str, *, gzip: bool) -> tuple[int, int, int]:
    with ThreadPoolExecutor(PARALLEL_GETS) as pool:
        results = list(pool.map(lambda f: download(f["url"], token, gzip=gzip), files))
    for item, (lines, _, _) in zip(files, results, strict=True):
        if lines != item["count"]:
            raise RuntimeError(f"{item['url']}: {lines} lines, the manifest says {item['count']}")
    return tuple(sum(r[i] for r in results) for i in range(3))


def client_export(base: str, token: str, group_id) -> ClientRun:
    """Kick-off → polls at the pace Retry-After asks → every file with 2 parallel GETs → lines counted."""
    import requests

    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    started = time.perf_counter()
    kickoff = http.get(f"{base}/Group/{group_id}/$davinci-data-export", headers={"Prefer": "respond-async"},
                       timeout=60)
    if kickoff.status_code != 202:
        raise RuntimeError(f"kick-off answered {kickoff.status_code}: {kickoff.text[:500]}")
    kickoff_seconds = time.perf_counter() - started
    status_url = kickoff.headers["Content-Location"]
    waits = [kickoff.headers.get("Retry-After", "1")]
    polls = 0
    poll_times: list[tuple[float, int]] = []
    while True:
        time.sleep(float(waits[-1]))
        polls += 1
        answer = http.get(status_url, timeout=60)
        poll_times.append((time.perf_counter() - started, answer.status_code))
        if answer.status_code == 200:
            manifest = answer.json()
            break
        if answer.status_code not in (202, 429):
            raise RuntimeError(f"status answered {answer.status_code}: {answer.text[:500]}")
        waits.append(answer.headers.get("Retry-After", "1"))
    manifest_at = time.perf_counter()
    lines, size, wire = download_all(manifest["output"], token, gzip=False)
    finished = time.perf_counter()
    return ClientRun(status_url.rstrip("/").rsplit("/", 1)[-1], manifest_at - started, finished - started, polls,
                     manifest["output"], lines, size, wire, waits, kickoff_seconds, poll_times)


# --- the raw COPY -----------------------------------------------------------------------------------

def collect_delivered(job) -> int:
    """Fill `bench_delivered` with the ids of the stored rows this export delivered (the same rules, consents
    and shared references); returns how many."""
    from django.db import connection

    from consent.models import Consent
    from exports import rules
    from exports.models import ExportChunk
    from matching.models import GroupMember

    member_ids = list(GroupMember.objects.filter(group_id=job.group_id).values_list("member_id", flat=True))
    regular = set(Consent.objects.filter(partner=job.partner, policy="regular").values_list("member_id", flat=True))
    context = rules.export_context(window=rules.export_window(request_time=job.transaction_time),
                                   regular_member_ids=regular)
    refs: set[str] = set()
    for chunk_refs in ExportChunk.objects.filter(job=job).values_list("refs", flat=True):
        refs.update(chunk_refs)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_delivered")
        cursor.execute("CREATE UNLOGGED TABLE bench_delivered (id bigint PRIMARY KEY)")
        for resource_type in rules.EXPORT_TYPES:
            if resource_type in rules.SHARED_TYPES:
                ids = sorted(r.split("/", 1)[1] for r in refs if r.startswith(f"{resource_type}/"))
                cursor.execute("INSERT INTO bench_delivered SELECT id FROM pdex_resource WHERE resource_type = %s"
                               " AND member_id IS NULL AND fhir_id = ANY(%s)", [resource_type, ids])
            else:
                sql, params = rules.keyed_query(resource_type, member_ids, context)
                cursor.execute(f"INSERT INTO bench_delivered SELECT id FROM ({sql}) AS rows", params)  # noqa: S608
        cursor.execute("ANALYZE bench_delivered")
        cursor.execute("SELECT count(*) FROM bench_delivered")
        return cursor.fetchone()[0]


def raw_copy() -> tuple[float, int, int]:
    """`COPY (SELECT body::text …)` of the delivered rows on one connection: (seconds, rows, bytes)."""
    from exports.writer import stream_connection

    rows = size = 0
    started = time.perf_counter()
    with stream_connection() as conn, conn.cursor() as cursor, cursor.copy(
            "COPY (SELECT r.body::text FROM pdex_resource r JOIN bench_delivered d ON d.id = r.id) TO STDOUT") as copy:
        for row in copy:
            rows += 1
            size += len(row)
    return time.perf_counter() - started, rows, size


# --- one scale --------------------------------------------------------------------------------------

@dataclass
class Scale:
    scale: int
    members: int
    resources: int
    size: int
    files: int
    types: int
    too_many_files: list[str]
    copy_seconds: float
    copy_rows: int
    copy_size: int
    server_seconds: float
    planning_seconds: float
    chunks: int
    http: ClientRun
    gzip_seconds: float
    gzip_wire: int
    worker_peaks: list[int]
    stages: str = ""


def run_scale(scale: int, base: str, env: dict[str, str], concurrency: int) -> Scale:
    from django.conf import settings
    from django.db import connection

    from exports.models import ExportJob

    partner, token = new_partner()
    group, members = matched_group(partner)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE pdex_resource")  # as autovacuum would after a large load
    worker = Process([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues.worker_queues(QUEUE),
                      "-c", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat",
                      "-l", "info", "-n", f"{QUEUE}@%h"], env, f"export-worker-x{scale}")
    try:
        worker.wait_for("ready.")
        worker.start_sampling()
        warmup = client_export(base, token, group.pk)  # caches warm, and the rows it delivered are collected
        collect_delivered(ExportJob.objects.get(pk=warmup.job_id))
        before, copy_rows, copy_size = raw_copy()
        run = client_export(base, token, group.pk)
        after, _, _ = raw_copy()
        started = time.perf_counter()
        _, _, gzip_wire = download_all(run.files, token, gzip=True)
        gzip_seconds = time.perf_counter() - started
        peaks = worker.stop_sampling()
    finally:
        worker.stop()
    job = ExportJob.objects.get(pk=run.job_id)
    limit = settings.EXPORT_FILE_MAX_BYTES
    by_type: dict[str, list[dict]] = {}
    for item in run.files:
        by_type.setdefault(item["type"], []).append(item)
    too_many = [t for t, items in by_type.items() if len(items) > max(1, math.ceil(job.sizes.get(t, 0) / limit))]
    chunks = list(job.chunks.values_list("started_at", "finished_at"))
    since = job.created_at
    stages = (f"first chunk began {(min(c[0] for c in chunks) - since).total_seconds():.2f} s after kick-off, "
              f"last ended {(max(c[1] for c in chunks) - since).total_seconds():.2f} s, chunks took "
              f"{sum((c[1] - c[0]).total_seconds() for c in chunks):.2f} s of worker time "
              f"(longest {max((c[1] - c[0]).total_seconds() for c in chunks):.2f} s); finalize "
              f"{(job.finished_at - job.finalize_started_at).total_seconds():.2f} s") if chunks else ""
    return Scale(scale, len(members), sum(f["count"] for f in run.files), run.size, len(run.files), len(by_type),
                 too_many, (before + after) / 2, copy_rows, copy_size,
                 (job.finished_at - job.created_at).total_seconds(), (job.started_at - job.created_at).total_seconds(),
                 job.progress_total, run, gzip_seconds, gzip_wire, sorted(peaks.values(), reverse=True), stages)


def report(s: Scale) -> None:
    http = s.http
    print(f"×{s.scale}: {s.members:,} members, {s.resources:,} resources, {s.size / MB:,.1f} MB in {s.files} files "
          f"({s.types} types), {s.chunks} chunks", flush=True)
    print(f"  raw COPY   {s.copy_seconds:7.2f} s  {s.copy_rows / s.copy_seconds:>9,.0f} res/s "
          f"{s.copy_size / MB / s.copy_seconds:7.1f} MB/s  ({s.copy_rows:,} stored rows delivered)")
    print(f"  server     {s.server_seconds:7.2f} s  {s.resources / s.server_seconds:>9,.0f} res/s "
          f"{s.size / MB / s.server_seconds:7.1f} MB/s  ratio {s.copy_seconds / s.server_seconds:.2f} (goal ≥ 0.8); "
          f"planning {s.planning_seconds:.2f} s")
    print(f"             {s.stages}")
    print(f"  HTTP       {http.seconds:7.2f} s  {s.resources / http.seconds:>9,.0f} res/s "
          f"{s.size / MB / http.seconds:7.1f} MB/s  ratio {s.copy_seconds / http.seconds:.2f} (goal ≥ 0.6); "
          f"manifest at {http.manifest_seconds:.2f} s after {http.polls} poll(s), "
          f"Retry-After {','.join(http.retry_after)}")
    print(f"             kick-off answered in {http.kickoff_seconds:.2f} s; polls at "
          + ", ".join(f"{at:.2f} s ({status})" for at, status in http.poll_times)
          + f"; downloads {http.seconds - http.manifest_seconds:.2f} s")
    print(f"  gzip       {s.gzip_seconds:7.2f} s  {s.size / MB / s.gzip_seconds:7.1f} MB/s of NDJSON, "
          f"{s.gzip_wire / MB / s.gzip_seconds:.1f} MB/s on the wire; {s.gzip_wire / MB:.1f} MB, "
          f"{s.size / max(s.gzip_wire, 1):.1f}× fewer bytes (goal ≥ 4)")
    print(f"  worker peak RSS MB per process: {[round(p / 2**20) for p in s.worker_peaks]}; files over one per type "
          f"per EXPORT_FILE_MAX_BYTES: {s.too_many_files or 'none'}", flush=True)


def goals(results: dict[int, Scale]) -> None:
    print("\ngoals:")

    def line(ok: bool, text: str) -> None:
        print(f"  [{'met' if ok else 'NOT met'}] {text}")

    for s in results.values():
        line(s.copy_seconds / s.server_seconds >= 0.8, f"×{s.scale} server ≥ 0.8× raw COPY: "
             f"{s.copy_seconds / s.server_seconds:.2f}")
        line(s.copy_seconds / s.http.seconds >= 0.6, f"×{s.scale} HTTP ≥ 0.6× raw COPY: "
             f"{s.copy_seconds / s.http.seconds:.2f}")
        fewer = s.size / max(s.gzip_wire, 1)
        line(fewer >= 4, f"×{s.scale} gzip ≥ 4× fewer bytes: {fewer:.1f}×")
    if 1 in results:
        line(results[1].http.seconds < 1.5, f"×1 kick-off to last byte < 1.5 s: {results[1].http.seconds:.2f} s")
    if 10 in results and 100 in results:
        ten, hundred = results[10], results[100]
        server = (hundred.resources / hundred.server_seconds) / (ten.resources / ten.server_seconds)
        client = (hundred.resources / hundred.http.seconds) / (ten.resources / ten.http.seconds)
        line(server >= 0.9, f"×100 res/s ≥ 0.9× ×10 (server): {server:.2f} (HTTP {client:.2f})")
        line(not hundred.too_many_files, f"×100 at most one data file per type per EXPORT_FILE_MAX_BYTES: "
             f"{hundred.too_many_files or 'yes'}")
    low, high = min(results), max(results)
    if high > low:
        ratio = max(results[high].worker_peaks) / max(results[low].worker_peaks)
        line(ratio <= 1.2, f"worker peak RSS ×{high} ≤ 1.2× ×{low}: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--database", default="", help="default: <the configured database>_bench_export")
    parser.add_argument("--scales", default=os.environ.get("BENCH_SCALES", "1,10,100"),
                        help="comma list of multiplies, ascending")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8120")))
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (the benchmark needs ../shared/data)")
    scales = sorted(int(s) for s in args.scales.split(","))

    import django
    from django.conf import settings

    recreate_database(args.database or bench_database("export"))
    django.setup()
    from django.core.management import call_command

    from pdex import ingest
    from pdex.synthesize import synthesize

    call_command("migrate", verbosity=0)
    ingest.load_paths([args.data], validate=False, progress=False)
    synthesize(seed=42)
    storage = tempfile.mkdtemp(prefix="bench-export-")
    base = f"http://127.0.0.1:{args.port}/fhir"
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "CELERY_QUEUE": QUEUE,
           "CACHE_KEY_PREFIX": QUEUE, "FHIR_BASE_URL": base, "EXPORT_STORAGE_URL": f"file://{storage}",
           "LOG_LEVEL": "WARNING", "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)}
    web = Process([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                   "--bind", f"127.0.0.1:{args.port}",
                   "--workers", "2", "--threads", "4", "--timeout", "600"], env, "export-web")
    print(f"database {settings.DATABASES['default']['NAME']}; web gunicorn :{args.port} (2 × 4 threads); "
          f"{args.concurrency} worker process(es); {os.cpu_count()} CPU(s); chunks of {settings.EXPORT_CHUNK_ROWS:,} "
          f"rows; files up to {settings.EXPORT_FILE_MAX_BYTES / 2**20:.0f} MiB; storage file://{storage}", flush=True)
    results: dict[int, Scale] = {}
    try:
        web.wait_for("Booting worker")
        current = 1
        for scale in scales:
            if scale > current:
                print(f"multiplying the data ×{scale} …", flush=True)
                began = time.perf_counter()
                synthesize(seed=42, multiply=scale)
                print(f"  multiplied in {time.perf_counter() - began:.0f} s", flush=True)
                current = scale
            results[scale] = run_scale(scale, base, env, args.concurrency)
            report(results[scale])
    finally:
        web.stop()
    goals(results)


if __name__ == "__main__":
    main()
