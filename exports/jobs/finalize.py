"""The end of an export: shared resources, the error file, counts, completed; and re-running a job in place.

The finalize runs on the control queue when the last chunk is done (or when the sweep finds a finalize that
never ended); deterministic keys make a second run overwrite the first.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from exports import files, planning, withdrawal, writer
from exports.jobs.plan import job_params
from exports.jobs.run import delete_objects
from exports.kind import EXPORT
from exports.models import ExportChunk, ExportFilePart, ExportJob
from pdex import audit
from pdex.fhir import operation_outcome, outcome_issue
from pdex.jobs import asyncstatus, engine
from pdex.jobs.models import OutputFile
from pdex.jobs.outputs import write_output_file

ERROR_TYPE = "OperationOutcome"


def finalize(job_id: uuid.UUID | str, *, now: datetime | None = None) -> bool:
    """Write what belongs to the whole export (shared resources, error file), sum counts, mark completed.

    Only a running job whose chunks are all done is finalized; returns whether this call completed it.
    """
    given, now = now, now or timezone.now()
    job = ExportJob.objects.select_related("partner").get(pk=job_id)
    if job.status != ExportJob.Status.RUNNING or job.progress_done < job.progress_total:
        return False
    if withdrawal.withdraw(job.id, now=now, trigger="finalize"):
        return False  # a member's consent ended while the chunks ran: the job runs again without them
    refs: set[str] = set()
    for chunk_refs in job.chunks.filter(status=ExportChunk.Status.DONE).values_list("refs", flat=True).iterator():
        refs.update(chunk_refs)
    first = job.progress_total + 1
    params = job_params(job)
    _, shared = writer.write_shared(job, refs, first_sequence=first, types=params.requested_types,
                                    elements=params.elements)
    delete_objects(files.record_parts(job.id, shared, planning.part_sequence(first, 0),
                                      planning.part_sequence(first + len(planning.SHARED_TYPES) + 1, 0)))
    write_error_file(job)
    published = files.publish(job)  # every type's segments joined into its files (before anything is listed)
    counts: Counter[str] = Counter()
    for output in published.files:
        counts[output.resource_type] += output.count
    with transaction.atomic():
        stale = files.record_published(job, published)
        job.counts = {k: v for k, v in sorted(counts.items()) if v}
        job.sizes = {resource_type: size for resource_type, size in OutputFile.objects.filter(
            job_id=job.id, kind=OutputFile.Kind.OUTPUT).values("resource_type").annotate(size=Sum("size"))
            .order_by("resource_type").values_list("resource_type", "size") if size}
        job.save(update_fields=["counts", "sizes"])
        # Stamped when it completes, not when the finish began: joining a large export's files takes seconds
        # (8 s for 1.96 GB here), and finished_at is what an export's duration is read from.
        completed = asyncstatus.mark_completed(job, now=given or timezone.now())
    delete_objects(stale)
    if not completed:  # cancelled while we joined: nothing of it may outlive the job
        asyncstatus.delete_outputs(job)
        return False
    files.delete_segments(job)
    audit.record("export-complete", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}",
                 detail={"members": job.member_count, "counts": job.counts,
                         "group": job.group_id or "", "kind": job.kind})
    return True


def write_error_file(job: ExportJob) -> OutputFile | None:
    """The manifest's `error` file: one OperationOutcome per message (warnings, exclusions, rewrites)."""
    messages = [*job.messages, *job.planning_messages]
    if job.withdrawn_members:
        messages.append(outcome_issue("warning", "suppressed", withdrawal.error_issue_text(job)))
    if not messages:
        return None
    lines = (json.dumps(operation_outcome(issue), separators=(",", ":")).encode() for issue in messages)
    return write_output_file(partner=job.partner, job_id=job.id, resource_type=ERROR_TYPE, lines=lines,
                             kind=OutputFile.Kind.ERROR, sequence=0)


def rerun(job_id: uuid.UUID | str, *, request=None, now: datetime | None = None) -> bool:
    """Run a failed or completed export again in place, for an admin: the partner's status URL stays valid.

    Chunks, files and counts start afresh, the window moves to the new request time, and consent is
    re-checked at planning, as for any export. Running and cancelled jobs are left alone (a cancel means the
    partner is done with it); returns whether it re-ran.
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = ExportJob.objects.select_for_update().select_related("partner").get(pk=job_id)
        if job.status not in (ExportJob.Status.FAILED, ExportJob.Status.COMPLETED):
            return False
        job.chunks.all().delete()
        ExportFilePart.objects.filter(job=job).delete()
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.QUEUED, transaction_time=now, params=job_params(job).again_at(now).to_json(),
            progress_done=0, progress_total=0, error=None, started_at=None, finished_at=None, expires_at=None,
            last_polled_at=None, finalize_started_at=None, member_count=0, counts={}, sizes={}, planning_messages=[],
            withdrawn_members=0)

        def restart() -> None:
            # Files first, then the nudge: the new chunks write to the same deterministic keys.
            asyncstatus.delete_outputs(job)
            engine.nudge(EXPORT.plan_task, str(job.id))

        transaction.on_commit(restart)
    audit.record("export-rerun", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}", request=request,
                 reason="re-run by admin")
    return True


def fail(job_id: uuid.UUID | str, diagnostics: str, *, now: datetime | None = None) -> bool:
    """The job ends as failed with an OperationOutcome (the status URL answers with it)."""
    return engine.fail_job(EXPORT, job_id, diagnostics, now=now)
