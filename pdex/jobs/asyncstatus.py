"""The FHIR asynchronous request pattern, shared by bulk member match and exports (Bulk Data 2.0.0, spec §7).

One status URL per job (`/fhir/bulkstatus/{id}`) whatever the job's kind: while it runs, 202 with
`X-Progress` and `Retry-After`; polled too fast, 429; completed, 200 with the manifest; failed, the stored
OperationOutcome; cancelled, expired, unknown or another partner's, 404 (spec §5.7 rule 7).

Job kinds register in pdex.jobs.kinds (each app in its AppConfig.ready()). Work in progress (export chunks,
match batches) reads `job.status` and stops when it sees `cancelled`; the helpers `mark_completed` /
`mark_failed` change state only from queued/running, so a cancel is never overwritten by a late finish.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone
from django.utils.http import http_date
from django.utils.module_loading import import_string

from pdex import audit
from pdex.auth import scopes
from pdex.fhir import FhirError, Forbidden, NotFound, TooManyRequests, operation_outcome, outcome_issue
from pdex.jobs import kinds, outputs, signing
from pdex.jobs.models import AsyncJob, OutputFile
from pdex.jobs.storage import get_storage
from pdex.models import Partner

log = logging.getLogger(__name__)

# A poll that comes sooner than this fraction of the shortest Retry-After (1 s) after the previous one is 429.
POLL_FLOOR_FRACTION = 0.5
# Manifest `extension` key carrying the instant presigned URLs stop working (EXPORT_PRESIGNED_MANIFEST).
URL_EXPIRES_EXTENSION = "urlExpires"
IN_PROGRESS = (AsyncJob.Status.QUEUED, AsyncJob.Status.RUNNING)

# HTTP status for a failed job, from the first issue code of its OperationOutcome (default 500).
_FAILURE_STATUS = {
    "invalid": 400, "structure": 400, "required": 400, "value": 400, "invariant": 400, "not-supported": 400,
    "security": 403, "forbidden": 403, "login": 401, "not-found": 404, "deleted": 410, "too-costly": 413,
    "business-rule": 422, "processing": 500, "throttled": 429, "transient": 503, "timeout": 503,
    "lock-error": 503, "exception": 500,
}


class TransientError(FhirError):
    """Something we depend on (database, storage) failed for now; the client should retry."""

    status, code = 503, "transient"

    def __init__(self, diagnostics: str):
        super().__init__(diagnostics, headers={"Retry-After": str(max(settings.STATUS_RETRY_AFTER_SECONDS, 1))})


@contextmanager
def job_store():
    """Turn a database failure into a transient error, so clients retry instead of giving up (spec §7.3)."""
    try:
        yield
    except DatabaseError as exc:
        log.warning("job store unavailable: %s", exc)
        raise TransientError("The job store is unavailable; retry later.") from exc


@dataclass
class StatusAnswer:
    """What the status URL answers: an HTTP status, headers and a JSON body (manifest or OperationOutcome)."""

    http_status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/fhir+json"


# --- lookup --------------------------------------------------------------------------------------

def job_models() -> list[type[AsyncJob]]:
    """The job models the status URL serves: every registered partner-facing kind."""
    return [kind.jobs for kind in kinds.partner_facing_kinds()]


def status_url(job: AsyncJob) -> str:
    """The absolute status URL (the kick-off's Content-Location)."""
    return f"{settings.FHIR_BASE_URL}/bulkstatus/{job.id}"


def find_job(job_id: UUID | str, *, partner: Partner | None = None) -> AsyncJob:
    """The job with this id, of `partner` when given; NotFound otherwise (never 403: ids reveal nothing)."""
    with job_store():
        for model in job_models():
            jobs = model.objects.filter(pk=job_id)
            if partner is not None:
                jobs = jobs.filter(partner=partner)
            job = jobs.first()
            if job is not None:
                return job
    raise NotFound(f"No bulk job {job_id}.", audit_reason="no such job of this client")


def is_expired(job: AsyncJob, now: datetime | None = None) -> bool:
    return job.expires_at is not None and job.expires_at <= (now or timezone.now())


def live_job(job_id: UUID | str, *, partner: Partner, now: datetime | None = None) -> AsyncJob:
    """The partner's job unless it was cancelled or its outputs expired (both answer 404, spec §7.5)."""
    job = find_job(job_id, partner=partner)
    if job.status == AsyncJob.Status.CANCELLED:
        raise NotFound(f"Bulk job {job_id} was cancelled.", audit_reason="cancelled")
    if job.is_finished and is_expired(job, now):
        raise NotFound(f"The outputs of bulk job {job_id} have expired.", audit_reason="expired")
    return job


def require_access(job: AsyncJob, granted: Iterable[str] | None, output: OutputFile | None = None) -> None:
    """403 unless the token's scopes cover what the job's kind asks for its status URL (or for this file).

    Checked after the job was found to be the caller's, so another partner's job is still a 404. `granted`
    None: no token to check (a signed URL vouched for the file).
    """
    if granted is None:
        return
    needed = kinds.kind_of(job).required_scopes(job, output)
    if not scopes.satisfies_all(list(granted), needed):
        what = f"this {output.resource_type} file" if output is not None else f"this {kinds.kind_of(job).title}"
        raise Forbidden(f"The token's scopes do not cover {what}: it needs the scopes of the kick-off.",
                        audit_reason="token scopes do not cover the job")


# --- status --------------------------------------------------------------------------------------

def progress_text(job: AsyncJob) -> str:
    """X-Progress (under 100 characters), e.g. "chunks 45/100" or "members 300/1000"."""
    if job.status == AsyncJob.Status.QUEUED and not job.progress_total:
        return "queued"
    unit = kinds.kind_of(job).progress_unit
    return f"{unit} {job.progress_done}/{job.progress_total}"[:99]


def retry_after(job: AsyncJob, *, now: datetime) -> int:
    """How long the client should wait before its next poll: the estimated time left, in whole seconds, between
    1 and STATUS_RETRY_AFTER_SECONDS.

    From the job's own pace once some of it is done: half of elapsed × left / done, so the polls close in on the
    end instead of overshooting it when the last units go faster than the first (units differ in size, and the
    first wait on the workers); before that, 1 s while the job is younger than the cap (a small export is done
    within a second or two), the cap after; 1 s once every unit is done (the finish takes well under a
    second: an export of 1.46 million resources once waited 10 s here for a manifest ready in 0.02 s). Never
    more than half the job's age: an estimate from its first
    units (two workers still warming up) once said 6 s for an export done 3.6 s later, so the client waits at
    most a third longer than the job takes, in a handful more polls.
    """
    cap = settings.STATUS_RETRY_AFTER_SECONDS
    if cap <= 1:
        return max(cap, 0)
    age = (now - job.created_at).total_seconds() if job.created_at else 0.0
    if job.progress_total and job.progress_done >= job.progress_total:
        return 1  # every unit done: the finish is writing the manifest's last files
    left = time_left(job, now=now)
    if left is not None:
        return int(min(max(min(math.ceil(left / 2), math.floor(age / 2)), 1), cap))
    return 1 if age < cap else cap


def time_left(job: AsyncJob, *, now: datetime) -> float | None:
    """Seconds of work left at the job's own pace (elapsed × left / done); None before its first unit is done
    or once every unit is."""
    if not job.progress_done or job.started_at is None or job.progress_total <= job.progress_done:
        return None
    elapsed = (now - job.started_at).total_seconds()
    return elapsed * (job.progress_total - job.progress_done) / job.progress_done


# A job whose last unit finished longer ago than this is not "finishing": its finish is stuck or lost, and the
# recovery sweep, not a waiting poll, will see to it.
FINISHING_FOR_AT_MOST = timedelta(seconds=30)
# How often a held poll looks at the job row again.
HOLD_STEP_SECONDS = 0.05


def finishing_soon(job: AsyncJob, *, now: datetime) -> bool:
    """Whether the job should be done within STATUS_HOLD_SECONDS: every unit done and its finish under way, or
    at its own pace less than that left."""
    hold = settings.STATUS_HOLD_SECONDS
    if hold <= 0 or job.status != AsyncJob.Status.RUNNING or not job.progress_total:
        return False
    if job.progress_done >= job.progress_total:
        return job.finalize_started_at is not None and now - job.finalize_started_at < FINISHING_FOR_AT_MOST
    left = time_left(job, now=now)
    return left is not None and left <= hold


@functools.cache
def _holds(size: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(max(size, 1))


def await_finish(job: AsyncJob) -> bool:
    """Hold a poll that found its job about to finish, up to STATUS_HOLD_SECONDS, until the job leaves
    queued/running; whether it did.

    Retry-After is whole seconds and a finishing job says 1: a job done 0.1 s after a poll kept its client
    waiting 0.9 s more (a quarter of a ×10 export's time to its manifest, a third of a 10,000-member match).
    At most STATUS_HOLDS polls of a web process are held at once, so held polls never take all its threads; one
    that finds no place is answered at once, as before.
    """
    holds = _holds(settings.STATUS_HOLDS)
    if not holds.acquire(blocking=False):
        return False
    try:
        deadline = time.monotonic() + settings.STATUS_HOLD_SECONDS
        rows = type(job).objects.filter(pk=job.pk).values_list("status", flat=True)
        while time.monotonic() < deadline:
            time.sleep(HOLD_STEP_SECONDS)
            if rows.first() not in IN_PROGRESS:
                return True
        return False
    finally:
        holds.release()


def claim_poll(job: AsyncJob, *, now: datetime) -> bool:
    """Record this poll unless the previous one came less than half the shortest Retry-After we ever give (1 s)
    ago; atomic in PostgreSQL across web processes. A client that waits as told is never refused, whatever
    its job's estimate; one that does not is held to two polls a second."""
    floor = timedelta(seconds=min(settings.STATUS_RETRY_AFTER_SECONDS, 1) * POLL_FLOOR_FRACTION)
    claimed = type(job).objects.filter(pk=job.pk).filter(
        Q(last_polled_at__isnull=True) | Q(last_polled_at__lte=now - floor)
    ).update(last_polled_at=now)
    return claimed == 1


def failure_status(outcome: dict[str, Any] | None) -> int:
    """The HTTP status of a failed job, read from its OperationOutcome's first issue code."""
    issues = (outcome or {}).get("issue") or [{}]
    return _FAILURE_STATUS.get(issues[0].get("code", ""), 500)


def poll(job_id: UUID | str, *, partner: Partner, granted: Iterable[str] | None = None,
         now: datetime | None = None) -> StatusAnswer:
    """Answer one status request (spec §7.3); `granted`: the token's scopes."""
    with job_store():
        return _poll(job_id, partner=partner, granted=granted, now=now or timezone.now())


def _poll(job_id: UUID | str, *, partner: Partner, granted: Iterable[str] | None, now: datetime) -> StatusAnswer:
    job = live_job(job_id, partner=partner, now=now)
    require_access(job, granted)
    if job.status in IN_PROGRESS:
        wait = retry_after(job, now=now)
        if not claim_poll(job, now=now):
            raise TooManyRequests("Polled faster than Retry-After; wait before polling again.", retry_after=wait)
        if finishing_soon(job, now=now):
            await_finish(job)
            now = timezone.now()
            job = live_job(job_id, partner=partner, now=now)  # as it is now: done, still running, or cancelled
            if job.status not in IN_PROGRESS:
                return _poll_answer(job, now=now)
            wait = retry_after(job, now=now)
        wait_text = str(wait)
        # Bulk Data prescribes no body here; an empty one served as JSON is not JSON, so we say where it stands.
        progress = operation_outcome(outcome_issue("information", "informational",
                                                   f"In progress ({progress_text(job)}); retry after {wait_text} s."))
        return StatusAnswer(202, progress, {"X-Progress": progress_text(job), "Retry-After": wait_text})
    return _poll_answer(job, now=now)


def _poll_answer(job: AsyncJob, *, now: datetime) -> StatusAnswer:
    """The answer for a job no longer in progress: its failure, or the manifest."""
    if job.status == AsyncJob.Status.FAILED:
        outcome = job.error or operation_outcome(outcome_issue("error", "exception", "The bulk job failed."))
        return StatusAnswer(failure_status(outcome), outcome)
    headers = {"Expires": http_date(job.expires_at.timestamp())} if job.expires_at else {}
    return StatusAnswer(200, build_manifest(job, now=now), headers, content_type="application/json")


# --- manifest ------------------------------------------------------------------------------------

def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def presigned_manifest() -> bool:
    return settings.EXPORT_PRESIGNED_MANIFEST


def file_url(output_file: OutputFile, *, now: datetime | None = None) -> str:
    """Where a manifest sends the client for this file.

    Default: our API (`/bulkfiles/{id}`, bearer token of the owner). With EXPORT_PRESIGNED_MANIFEST: a URL that
    needs no token — S3's presigned URL, or for file storage our HMAC-signed URL — valid for
    EXPORT_PRESIGNED_URL_SECONDS.
    """
    if not presigned_manifest():
        return f"{settings.FHIR_BASE_URL}/bulkfiles/{output_file.id}"
    return presigned_file_url(output_file, now=now)


def presigned_file_url(output_file: OutputFile, *, now: datetime | None = None) -> str:
    lifetime = settings.EXPORT_PRESIGNED_URL_SECONDS
    url = get_storage().presigned_url(output_file.storage_key, lifetime)
    if url:
        return url
    expires, sig = signing.sign(output_file.id, expires_in=lifetime, now=now)
    return f"{settings.FHIR_BASE_URL}/bulkfiles/{output_file.id}/signed?expires={expires}&signature={sig}"


def job_files(job: AsyncJob) -> list[OutputFile]:
    return list(OutputFile.objects.filter(job_id=job.id, partner_id=job.partner_id)
                .order_by("kind", "sequence", "resource_type"))


def build_manifest(job: AsyncJob, *, now: datetime | None = None) -> dict[str, Any]:
    """The completion manifest (spec §7.4): one item per file; `deleted` only when there are such files."""
    now = now or timezone.now()
    presigned = presigned_manifest()
    items: dict[str, list[dict[str, Any]]] = {kind: [] for kind in OutputFile.Kind.values}
    for output in job_files(job):
        items[output.kind].append({"type": output.resource_type, "url": file_url(output, now=now),
                                   "count": output.count})
    manifest: dict[str, Any] = {
        "transactionTime": instant(job.transaction_time or job.created_at),
        "request": job.request_url,
        "requiresAccessToken": not presigned,
        "output": items[OutputFile.Kind.OUTPUT],
        "error": items[OutputFile.Kind.ERROR],
    }
    if items[OutputFile.Kind.DELETED]:
        manifest["deleted"] = items[OutputFile.Kind.DELETED]
    if presigned:
        expires = now + timedelta(seconds=settings.EXPORT_PRESIGNED_URL_SECONDS)
        manifest["extension"] = {URL_EXPIRES_EXTENSION: instant(expires)}
    return manifest


# --- state changes -------------------------------------------------------------------------------

def mark_running(job: AsyncJob, *, now: datetime | None = None) -> bool:
    """queued → running (sets started_at and transactionTime); False if the job is no longer queued."""
    now = now or timezone.now()
    changed = type(job).objects.filter(pk=job.pk, status=AsyncJob.Status.QUEUED).update(
        status=AsyncJob.Status.RUNNING, started_at=now, transaction_time=job.transaction_time or now)
    if changed:
        job.refresh_from_db()
    return bool(changed)


def mark_completed(job: AsyncJob, *, now: datetime | None = None) -> bool:
    """queued/running → completed, outputs kept EXPORT_OUTPUT_TTL_SECONDS; False if cancelled meanwhile."""
    now = now or timezone.now()
    changed = type(job).objects.filter(pk=job.pk, status__in=IN_PROGRESS).update(
        status=AsyncJob.Status.COMPLETED, finished_at=now, transaction_time=job.transaction_time or now,
        expires_at=now + timedelta(seconds=settings.EXPORT_OUTPUT_TTL_SECONDS))
    if changed:
        job.refresh_from_db()
    return bool(changed)


def mark_failed(job: AsyncJob, outcome: dict[str, Any], *, now: datetime | None = None) -> bool:
    """queued/running → failed with `outcome` (its first issue code picks the HTTP status); False if finished."""
    now = now or timezone.now()
    changed = type(job).objects.filter(pk=job.pk, status__in=IN_PROGRESS).update(
        status=AsyncJob.Status.FAILED, finished_at=now, error=outcome,
        expires_at=now + timedelta(seconds=settings.EXPORT_OUTPUT_TTL_SECONDS))
    if changed:
        job.refresh_from_db()
    return bool(changed)


def delete_outputs(job: AsyncJob) -> int:
    """Remove the job's files from storage and their rows; returns how many rows went."""
    files = OutputFile.objects.filter(job_id=job.id)
    storage = get_storage()
    prefix = outputs.job_prefix(job.partner_id, job.id)
    storage.delete_prefix(prefix)
    for key in files.exclude(storage_key__startswith=prefix).values_list("storage_key", flat=True):
        storage.delete_prefix(key)
    deleted, _ = files.delete()
    return deleted


def cancel_job(job: AsyncJob, request=None, *, reason: str = "", now: datetime | None = None) -> bool:
    """DELETE on the status URL: mark cancelled (running work sees it and stops), delete files, audit.

    A completed job is cancelled too ("client done"): its files go and its status URL answers 404.
    Returns False when the job was already cancelled.
    """
    now = now or timezone.now()
    previous = job.status
    changed = type(job).objects.filter(pk=job.pk).exclude(status=AsyncJob.Status.CANCELLED).update(
        status=AsyncJob.Status.CANCELLED, finished_at=job.finished_at or now)
    if not changed:
        return False
    job.refresh_from_db()
    removed = delete_outputs(job)
    audit.record("bulk-cancel", audit.SUCCESS, partner=job.partner, entity=f"{job._meta.model_name}/{job.id}",
                 reason=reason or ("client done" if previous == AsyncJob.Status.COMPLETED else "cancelled by client"),
                 detail={"previous_status": previous, "files_removed": removed}, request=request)
    return True


def cancel(job_id: UUID | str, *, partner: Partner, granted: Iterable[str] | None = None, request=None) -> None:
    """DELETE on the status URL: the partner's live job is cancelled, anything else is 404."""
    with job_store():
        job = live_job(job_id, partner=partner)
        require_access(job, granted)
        if not cancel_job(job, request):
            raise NotFound(f"Bulk job {job_id} was cancelled.", audit_reason="cancelled")


def expire_outputs(*, now: datetime | None = None) -> int:
    """Delete the files of jobs past expires_at, and any written after a cancel; returns jobs cleaned."""
    now = now or timezone.now()
    with_files = OutputFile.objects.values("job_id")
    cleaned = 0
    for model in job_models():
        jobs = model.objects.filter(id__in=with_files).filter(
            Q(expires_at__lte=now, status__in=[AsyncJob.Status.COMPLETED, AsyncJob.Status.FAILED])
            | Q(status=AsyncJob.Status.CANCELLED))
        for job in jobs.iterator():
            removed = delete_outputs(job)
            audit.record("bulk-expire", audit.SUCCESS, partner=job.partner,
                         entity=f"{job._meta.model_name}/{job.id}", detail={"files_removed": removed})
            cleaned += 1
    for kind in kinds.kinds():
        if kind.purge_expired:
            import_string(kind.purge_expired)(now)
    return cleaned


# --- files ---------------------------------------------------------------------------------------

def downloadable_file(file_id: UUID | str, *, partner: Partner | None, granted: Iterable[str] | None = None,
                      now: datetime | None = None) -> OutputFile:
    """The file if its job is the partner's (any partner when None, for signed URLs), completed and live, and
    the token's scopes (`granted`) cover it."""
    with job_store():
        files = OutputFile.objects.filter(pk=file_id)
        if partner is not None:
            files = files.filter(partner=partner)
        output = files.first()
    if output is None:
        raise NotFound(f"No bulk file {file_id}.")
    job = live_job(output.job_id, partner=output.partner, now=now)
    if job.status != AsyncJob.Status.COMPLETED:
        raise NotFound(f"No bulk file {file_id}.")
    require_access(job, granted, output)
    with job_store():
        kinds.kind_of(job).check_download(job, output)
    return output


def open_file(output: OutputFile) -> tuple[Iterator[bytes] | BinaryIO, int]:
    """The file's bytes (the open file itself on file storage, for sendfile) and size, looked up now so a
    missing object is a 404 before streaming starts."""
    storage = get_storage()
    try:
        present = storage.exists(output.storage_key)
        size = storage.size(output.storage_key) if present else 0
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("botocore", "boto3")):
            raise TransientError("The file store is unavailable; retry later.") from exc
        raise
    if not present:
        raise NotFound(f"No bulk file {output.id}.")
    local = storage.open_local(output.storage_key)
    return (local if local is not None else storage.read(output.storage_key)), size


def download(file_id: UUID | str, *, partner: Partner | None, granted: Iterable[str] | None = None, request=None,
             signed: bool = False) -> tuple[OutputFile, Iterator[bytes] | BinaryIO, int]:
    """A manifest file for `partner` (None: a signed URL already vouched for it): the row, its bytes, its size.

    A download is audited here with the file's partner and job; a refusal (403, 404) by the FHIR edge.
    """
    output = downloadable_file(file_id, partner=partner, granted=granted)
    content, size = open_file(output)
    audit_download(output, request, signed=signed)
    return output, content, size


def audit_download(output: OutputFile, request=None, *, signed: bool = False) -> None:
    audit.record("bulk-download", audit.SUCCESS, partner=output.partner, entity=f"OutputFile/{output.id}",
                 detail={"job": str(output.job_id), "kind": output.kind, "type": output.resource_type,
                         "count": output.count, "signed_url": signed}, request=request)
