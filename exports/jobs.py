"""The export job's state machine, kept in PostgreSQL: the queue only nudges, these functions decide.

queued ──plan──▶ running (chunks pending) ──chunks leased, written, finished──▶ the last chunk to finish
finalizes (shared resources, error file, counts) ──▶ completed.  A chunk whose worker died keeps a lease
that expires; `requeue_stale` hands it to another worker. A chunk that keeps failing fails the job.
Every step is idempotent: it may run twice, and the second run changes nothing or overwrites the same keys.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from consent.services import decisions_for_members
from exports import planning, rules
from exports.models import ExportChunk, ExportJob
from matching.models import GroupMember, MemberMatchGroup
from pdex import audit
from pdex.fhir import TooManyRequests, operation_outcome, outcome_issue
from pdex.jobs import asyncstatus
from pdex.jobs.models import OutputFile
from pdex.jobs.outputs import write_output_file
from pdex.models import Member, Partner

log = logging.getLogger(__name__)

ACTIVE = (ExportJob.Status.QUEUED, ExportJob.Status.RUNNING)
BUSY_RETRY_AFTER_SECONDS = 30
ERROR_TYPE = "OperationOutcome"


class LeaseLost(Exception):
    """Another worker took the chunk over (our lease expired) or the job stopped; drop what we were doing."""


@dataclass
class ChunkResult:
    """What writing one chunk produced, recorded on the chunk and summed into the job."""

    count: int = 0
    size: int = 0
    parts: int = 0
    refs: set[str] = field(default_factory=set)
    files: list[OutputFile] = field(default_factory=list)


# --- kick-off ------------------------------------------------------------------------------------

def start_export(*, partner: Partner, kind: str, params: dict[str, Any], request_url: str,
                 group: MemberMatchGroup | None = None, messages: Iterable[dict[str, Any]] = (),
                 request=None, now: datetime | None = None) -> ExportJob:
    """Record a queued export and nudge the planner; 429 when the partner already runs enough jobs.

    The partner row is locked while counting, so two kick-offs at once cannot both slip under the limit.
    """
    from exports.tasks.export import plan_export_task

    now = now or timezone.now()
    entity = f"Group/{group.pk}" if group else "Patient"
    with transaction.atomic():
        Partner.objects.select_for_update().filter(pk=partner.pk).first()
        running = ExportJob.objects.filter(partner=partner, status__in=ACTIVE).count()
        job = None
        if running < settings.EXPORT_MAX_RUNNING_JOBS:
            job = ExportJob.objects.create(partner=partner, kind=kind, group=group, params=params,
                                           request_url=request_url, transaction_time=now, messages=list(messages))
            transaction.on_commit(lambda: plan_export_task.delay(str(job.id)))
    if job is None:
        audit.record("export", audit.REFUSED, partner=partner, reason="too many running exports", entity=entity,
                     request=request, detail={"running": running, "limit": settings.EXPORT_MAX_RUNNING_JOBS})
        raise TooManyRequests(
            f"{running} exports are already running for this client (limit {settings.EXPORT_MAX_RUNNING_JOBS}); "
            "retry when one has finished.", retry_after=BUSY_RETRY_AFTER_SECONDS)
    audit.record("export", audit.SUCCESS, partner=partner, reason="kick-off", request=request, entity=entity,
                 detail={"job": str(job.id), "kind": kind, "types": params.get("types") or "all"})
    return job


# --- planning ------------------------------------------------------------------------------------

def candidate_members(job: ExportJob) -> tuple[list[int], list[dict[str, Any]]]:
    """The members the request names (Group members, or the partner's consented members for Patient/$export),
    narrowed by the `patient` parameter; plus one issue per `patient` reference that is not among them."""
    if job.group_id is not None:
        pool = GroupMember.objects.filter(group_id=job.group_id).values_list("member_id", flat=True)
    else:
        pool = job.partner.consents.values_list("member_id", flat=True)
    member_ids = set(pool)
    issues: list[dict[str, Any]] = []
    patients = job.params.get("patients") or []
    if patients:
        by_fhir_id = dict(Member.objects.filter(fhir_id__in=[p.split("/")[-1] for p in patients])
                          .values_list("fhir_id", "id"))
        chosen: set[int] = set()
        for index, reference in enumerate(patients):
            member_id = by_fhir_id.get(reference.split("/")[-1])
            if member_id in member_ids:
                chosen.add(member_id)
            else:
                issues.append(outcome_issue(
                    "warning", "not-found",
                    f"patient parameter #{index + 1} does not name a member of this export; it was skipped.",
                    expression=[f"patient[{index}]"]))
        member_ids = chosen
    return sorted(member_ids), issues


def present_types(resource_types: Iterable[str], member_ids: list[int]) -> list[str]:
    """The requested types any of these members has a row of: a type nobody has costs no chunk."""
    wanted = list(dict.fromkeys(resource_types))
    if not member_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE EXISTS (SELECT 1 FROM pdex_resource r"
            " WHERE r.resource_type = t AND r.member_id = ANY(%s))", [wanted, member_ids])
        present = {row[0] for row in cursor.fetchall()}
    return [t for t in wanted if t in present or t in planning.SHARED_TYPES]


def plan(job_id: uuid.UUID | str, *, now: datetime | None = None) -> list[int]:
    """Re-check every member's consent now, then create the job's chunks; returns the chunk ids to run.

    Idempotent: a job that is no longer queued is left alone (a redelivered planning message re-nudges
    its pending chunks instead).
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = ExportJob.objects.select_for_update().select_related("partner").get(pk=job_id)
        if job.status == ExportJob.Status.RUNNING:
            return list(job.chunks.filter(status=ExportChunk.Status.PENDING).values_list("id", flat=True))
        if job.status != ExportJob.Status.QUEUED:
            return []
        member_ids, issues = candidate_members(job)
        decisions = decisions_for_members(job.partner, member_ids, now=now)
        include_sensitive = {m: d.include_sensitive for m, d in decisions.items() if d.allowed}
        excluded = Counter(str(d.reason) for d in decisions.values() if not d.allowed)
        for reason, count in sorted(excluded.items()):
            # Counts and reasons only: the error file names no member (spec §5.7 rule 4).
            issues.append(outcome_issue(
                "warning", "suppressed",
                f"{count} member(s) excluded from this export: consent {reason} at export time."))
        types = present_types(job.params.get("types") or rules.EXPORT_TYPES, list(include_sensitive))
        chunks = planning.plan_chunks(include_sensitive=include_sensitive, resource_types=types,
                                      chunk_members=settings.EXPORT_CHUNK_MEMBERS)
        created = ExportChunk.objects.bulk_create([
            ExportChunk(job=job, sequence=c.sequence, resource_type=c.resource_type, member_ids=list(c.member_ids),
                        regular_member_ids=list(c.regular_member_ids)) for c in chunks])
        job.status = ExportJob.Status.RUNNING
        job.started_at = now
        job.progress_total = len(created)
        job.progress_done = 0
        job.member_count = len(include_sensitive)
        job.planning_messages = issues
        if not created:
            job.finalize_started_at = now
        job.save(update_fields=["status", "started_at", "progress_total", "progress_done", "member_count",
                                "planning_messages", "finalize_started_at"])
    audit.record("export-plan", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}",
                 detail={"members": len(include_sensitive), "excluded": sum(excluded.values()),
                         "chunks": len(created)})
    if not created:
        finalize(job.id, now=now)
    return [chunk.id for chunk in created]


# --- chunk leases --------------------------------------------------------------------------------

@contextmanager
def bookkeeping() -> Iterator[None]:
    """A transaction for chunk bookkeeping whose commit does not wait for the WAL flush (~8 ms a commit here,
    three commits a chunk). Safe because every step is idempotent: if PostgreSQL crashed and lost the last
    commits, a lost lease or a lost "done" only means the chunk runs again and overwrites the same keys."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def new_lease_owner(worker: str = "") -> str:
    """A token unique to one attempt, so a worker that lost its lease can never finish the chunk."""
    return f"{worker or 'worker'}:{uuid.uuid4().hex}"[:200]


def lease(chunk_id: int, owner: str, *, now: datetime | None = None) -> ExportChunk | None:
    """Take the chunk if it is pending, or running under an expired lease, and its job is running.

    One UPDATE whose conditions are on the chunk row itself, so PostgreSQL re-checks them after a
    concurrent update: two workers can never both hold it.
    """
    now = now or timezone.now()
    expires = now + timedelta(seconds=settings.EXPORT_LEASE_SECONDS)
    with bookkeeping(), connection.cursor() as cursor:
        cursor.execute(
            """UPDATE exports_exportchunk AS c
                   SET status = %s, lease_owner = %s, lease_expires = %s, attempts = c.attempts + 1,
                       started_at = %s, error = ''
                 WHERE c.id = %s AND c.attempts < %s
                   AND (c.status = %s OR (c.status = %s AND c.lease_expires < %s))
                   AND EXISTS (SELECT 1 FROM exports_exportjob j WHERE j.id = c.job_id AND j.status = %s)
             RETURNING c.id""",
            [ExportChunk.Status.RUNNING, owner, expires, now, chunk_id, settings.EXPORT_MAX_CHUNK_ATTEMPTS,
             ExportChunk.Status.PENDING, ExportChunk.Status.RUNNING, now, ExportJob.Status.RUNNING],
        )
        if cursor.fetchone() is None:
            return None
    return ExportChunk.objects.select_related("job", "job__partner").get(pk=chunk_id)


def heartbeat(chunk_id: int, owner: str, *, now: datetime | None = None) -> None:
    """Extend our lease; LeaseLost when it is no longer ours or the job was cancelled meanwhile."""
    now = now or timezone.now()
    with bookkeeping():
        kept = ExportChunk.objects.filter(
            pk=chunk_id, lease_owner=owner, status=ExportChunk.Status.RUNNING, job__status=ExportJob.Status.RUNNING,
        ).update(lease_expires=now + timedelta(seconds=settings.EXPORT_LEASE_SECONDS))
    if not kept:
        raise LeaseLost(f"chunk {chunk_id} is no longer leased by {owner}")


def release(chunk_id: int, owner: str, error: str) -> int:
    """Give a failed attempt back: pending again while attempts remain, else failed (and so the job).

    Returns the attempts used so far.
    """
    chunk = ExportChunk.objects.filter(pk=chunk_id, lease_owner=owner).first()
    if chunk is None:
        return 0
    exhausted = chunk.attempts >= settings.EXPORT_MAX_CHUNK_ATTEMPTS
    ExportChunk.objects.filter(pk=chunk_id, lease_owner=owner, status=ExportChunk.Status.RUNNING).update(
        status=ExportChunk.Status.FAILED if exhausted else ExportChunk.Status.PENDING,
        lease_owner="", lease_expires=None, error=error[:2000])
    if exhausted:
        fail(chunk.job_id, f"A part of the export ({chunk.resource_type}) failed "
                           f"{chunk.attempts} times; the export was stopped.")
    return chunk.attempts


def finish_chunk(chunk: ExportChunk, owner: str, result: ChunkResult, *, now: datetime | None = None) -> bool:
    """Record the chunk as done and count it on the job, atomically; True when it was the last one.

    The count lives in PostgreSQL (`UPDATE … RETURNING`), not in a Celery chord: whichever worker brings
    `progress_done` to `progress_total` finalizes the job, exactly once.
    """
    now = now or timezone.now()
    with bookkeeping():
        done = ExportChunk.objects.filter(pk=chunk.pk, lease_owner=owner, status=ExportChunk.Status.RUNNING).update(
            status=ExportChunk.Status.DONE, count=result.count, size=result.size, parts=result.parts,
            refs=sorted(result.refs), finished_at=now, lease_expires=None)
        if not done:
            raise LeaseLost(f"chunk {chunk.pk} was taken over before it finished")
        stale_keys = record_files(chunk.job_id, result.files, planning.part_sequence(chunk.sequence, 0),
                                  planning.part_sequence(chunk.sequence + 1, 0))
        with connection.cursor() as cursor:
            cursor.execute(
                """UPDATE exports_exportjob
                       SET progress_done = progress_done + 1,
                           finalize_started_at = CASE WHEN progress_done + 1 >= progress_total THEN %s
                                                      ELSE finalize_started_at END
                     WHERE id = %s AND status = %s
                 RETURNING progress_done, progress_total""",
                [now, chunk.job_id, ExportJob.Status.RUNNING])
            row = cursor.fetchone()
    delete_objects(stale_keys)
    if row is None:
        # Cancelled (or failed) while we wrote: what we just wrote must not outlive the job.
        discard_chunk_files(chunk)
        return False
    return row[0] >= row[1]


def record_files(job_id: uuid.UUID | str, files: list[OutputFile], low: int, high: int) -> list[str]:
    """Upsert the OutputFile rows of one unit of work (sequences low ≤ s < high) in one statement, and drop
    the rows a previous, longer run of it left behind; returns the storage keys to delete."""
    OutputFile.objects.bulk_create(files, update_conflicts=True, unique_fields=["storage_key"],
                                   update_fields=["job_id", "partner", "kind", "resource_type", "count", "size",
                                                  "sequence"])
    stale = OutputFile.objects.filter(job_id=job_id, kind=OutputFile.Kind.OUTPUT, sequence__gte=low,
                                      sequence__lt=high).exclude(
        storage_key__in=[f.storage_key for f in files])
    keys = list(stale.values_list("storage_key", flat=True))
    if keys:
        stale.delete()
    return keys


def delete_objects(keys: list[str]) -> None:
    if keys:
        from pdex.jobs.storage import get_storage

        storage = get_storage()
        for key in keys:
            storage.delete_prefix(key)


def discard_chunk_files(chunk: ExportChunk) -> None:
    from pdex.jobs.storage import get_storage

    low = planning.part_sequence(chunk.sequence, 0)
    files = OutputFile.objects.filter(job_id=chunk.job_id, sequence__gte=low,
                                      sequence__lt=planning.part_sequence(chunk.sequence + 1, 0))
    storage = get_storage()
    for key in files.values_list("storage_key", flat=True):
        storage.delete_prefix(key)
    files.delete()


# --- running a chunk ---------------------------------------------------------------------------

@dataclass
class ChunkOutcome:
    """What one delivery of a chunk task did; `retry_in` asks the task to try again after that many seconds."""

    state: str
    retry_in: int | None = None


def export_context(job: ExportJob, *, regular_member_ids: Iterable[int] = ()) -> rules.ExportContext:
    """The rules' context of this job: its request time, bounds, types and _typeFilter, re-read from params."""
    params = job.params
    filters = {}
    if params.get("type_filters"):
        from exports import typefilter

        filters = typefilter.type_filters(params["type_filters"])
    return rules.export_context(
        request_time=job.transaction_time,
        since=parse_datetime(params["since"]) if params.get("since") else None,
        until=parse_datetime(params["until"]) if params.get("until") else None,
        types=params.get("types") or None,
        type_filters=filters,
        regular_member_ids=regular_member_ids,
        care_start=parse_datetime(params["care_start"]) if params.get("care_start") else None,
        care_end=parse_datetime(params["care_end"]) if params.get("care_end") else None,
    )


def run_chunk(chunk_id: int, *, worker: str = "") -> ChunkOutcome:
    """Lease, write, finish; the worker that finishes the last chunk finalizes the job."""
    from exports import writer

    owner = new_lease_owner(worker)
    chunk = lease(chunk_id, owner)
    if chunk is None:
        return ChunkOutcome("skipped")  # done, held by a live lease, out of attempts, or the job stopped
    try:
        context = export_context(chunk.job, regular_member_ids=chunk.regular_member_ids)
        result = writer.write_chunk(chunk, context, heartbeat=lambda: heartbeat(chunk.pk, owner))
        last = finish_chunk(chunk, owner, result)
    except LeaseLost:
        return ChunkOutcome("lost")
    except Exception as exc:  # any failure must give the lease back and count the attempt
        log.exception("export chunk %s failed", chunk_id)
        attempts = release(chunk_id, owner, f"{type(exc).__name__}: {exc}")
        if attempts and attempts < settings.EXPORT_MAX_CHUNK_ATTEMPTS:
            return ChunkOutcome("retry", retry_in=min(2 ** attempts, 60))
        return ChunkOutcome("failed")
    if last:
        finalize(chunk.job_id)
        return ChunkOutcome("finalized")
    return ChunkOutcome("done")


# --- finalize ------------------------------------------------------------------------------------

def finalize(job_id: uuid.UUID | str, *, now: datetime | None = None) -> bool:
    """Write what belongs to the whole export (shared resources, error file), sum counts, mark completed.

    Runs in the worker that finished the last chunk; `requeue_stale` re-runs it if that worker died.
    Deterministic keys make a second run overwrite the first.
    """
    from exports import writer

    now = now or timezone.now()
    job = ExportJob.objects.select_related("partner").get(pk=job_id)
    if job.status != ExportJob.Status.RUNNING:
        return False
    chunks = list(job.chunks.filter(status=ExportChunk.Status.DONE).only("resource_type", "count", "refs"))
    counts: Counter[str] = Counter()
    refs: set[str] = set()
    for chunk in chunks:
        counts[chunk.resource_type] += chunk.count
        refs.update(chunk.refs)
    first = job.progress_total + 1
    extra, files = writer.write_shared(job, refs, first_sequence=first, types=job.params.get("types") or None)
    delete_objects(record_files(job.id, files, planning.part_sequence(first, 0),
                                planning.part_sequence(first + len(planning.SHARED_TYPES) + 1, 0)))
    counts.update(extra)
    provenance = OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT, resource_type="Provenance")
    counts["Provenance"] = sum(provenance.values_list("count", flat=True))
    write_error_file(job)
    job.counts = {k: v for k, v in sorted(counts.items()) if v}
    job.save(update_fields=["counts"])
    if not asyncstatus.mark_completed(job, now=now):
        return False
    audit.record("export-complete", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}",
                 detail={"members": job.member_count, "counts": job.counts,
                         "group": job.group_id or "", "kind": job.kind})
    return True


def write_error_file(job: ExportJob) -> OutputFile | None:
    """The manifest's `error` file: one OperationOutcome per message (warnings, exclusions, rewrites)."""
    import json

    messages = [*job.messages, *job.planning_messages]
    if not messages:
        return None
    lines = (json.dumps(operation_outcome(issue), separators=(",", ":")).encode() for issue in messages)
    return write_output_file(partner=job.partner, job_id=job.id, resource_type=ERROR_TYPE, lines=lines,
                             kind=OutputFile.Kind.ERROR, sequence=0)


def rerun(job_id: uuid.UUID | str, *, request=None, now: datetime | None = None) -> bool:
    """Run a failed or completed export again in place, for an admin: the partner's status URL stays valid.

    Chunks, files and counts start afresh and consent is re-checked at planning, as for any export. Running
    and cancelled jobs are left alone (a cancel means the partner is done with it); returns whether it re-ran.
    """
    from exports.tasks.export import plan_export_task

    now = now or timezone.now()
    with transaction.atomic():
        job = ExportJob.objects.select_for_update().select_related("partner").get(pk=job_id)
        if job.status not in (ExportJob.Status.FAILED, ExportJob.Status.COMPLETED):
            return False
        job.chunks.all().delete()
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.QUEUED, transaction_time=now, progress_done=0, progress_total=0, error=None,
            started_at=None, finished_at=None, expires_at=None, last_polled_at=None, finalize_started_at=None,
            member_count=0, counts={}, planning_messages=[])

        def restart() -> None:
            # Files first, then the nudge: the new chunks write to the same deterministic keys.
            asyncstatus.delete_outputs(job)
            plan_export_task.delay(str(job.id))

        transaction.on_commit(restart)
    audit.record("export-rerun", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}", request=request,
                 reason="re-run by admin")
    return True


def fail(job_id: uuid.UUID | str, diagnostics: str, *, now: datetime | None = None) -> bool:
    """The job ends as failed with an OperationOutcome (the status URL answers with it)."""
    job = ExportJob.objects.select_related("partner").get(pk=job_id)
    failed = asyncstatus.mark_failed(job, operation_outcome(outcome_issue("error", "exception", diagnostics)),
                                     now=now)
    if failed:
        audit.record("export-complete", audit.FAILED, partner=job.partner, entity=f"exportjob/{job.id}",
                     reason=diagnostics[:500])
    return failed


# --- recovery ------------------------------------------------------------------------------------

@dataclass
class Requeue:
    """What a recovery sweep found to nudge again."""

    chunks: list[int] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    finalizes: list[str] = field(default_factory=list)


def stalled_pending_chunks(*, stale_before: datetime, now: datetime) -> list[int]:
    """Pending chunks of jobs that stopped moving: no live lease and nothing started or finished for a lease's
    length. Their messages were lost with a worker killed outright (its reserved messages stay unacknowledged
    in Redis until the visibility timeout), so they are sent again; a duplicate finds the chunk done."""
    pending: list[int] = []
    running = ExportJob.objects.filter(status=ExportJob.Status.RUNNING, started_at__lt=stale_before,
                                       chunks__status=ExportChunk.Status.PENDING).distinct()
    for job in running:
        chunks = job.chunks.all()
        moving = chunks.filter(
            Q(status=ExportChunk.Status.RUNNING, lease_expires__gte=now)
            | Q(started_at__gte=stale_before) | Q(finished_at__gte=stale_before)).exists()
        if not moving:
            pending.extend(chunks.filter(status=ExportChunk.Status.PENDING).values_list("id", flat=True))
    return pending


def requeue_stale(*, now: datetime | None = None) -> Requeue:
    """Find work whose worker died (expired leases, stuck planning or finalizing) and say what to re-send.

    Chunks out of attempts fail their job instead of going round again.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.EXPORT_LEASE_SECONDS)
    found = Requeue()
    stale = ExportChunk.objects.filter(status=ExportChunk.Status.RUNNING, lease_expires__lt=now,
                                       job__status=ExportJob.Status.RUNNING)
    for chunk_id, job_id, attempts, resource_type in stale.values_list("id", "job_id", "attempts", "resource_type"):
        if attempts >= settings.EXPORT_MAX_CHUNK_ATTEMPTS:
            ExportChunk.objects.filter(pk=chunk_id).update(status=ExportChunk.Status.FAILED,
                                                           error="lease expired on the last attempt")
            fail(job_id, f"A part of the export ({resource_type}) did not finish in "
                         f"{attempts} attempts; the export was stopped.", now=now)
        else:
            found.chunks.append(chunk_id)
    found.chunks.extend(stalled_pending_chunks(stale_before=stale_before, now=now))
    found.plans = [str(pk) for pk in ExportJob.objects.filter(
        status=ExportJob.Status.QUEUED, created_at__lt=stale_before).values_list("id", flat=True)]
    for job_id in ExportJob.objects.filter(status=ExportJob.Status.RUNNING,
                                           finalize_started_at__lt=stale_before).values_list("id", flat=True):
        # Claim it again so two sweeps do not both re-send it.
        if ExportJob.objects.filter(pk=job_id, finalize_started_at__lt=stale_before).update(
                finalize_started_at=now):
            found.finalizes.append(str(job_id))
    return found
