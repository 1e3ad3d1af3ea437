"""Planning an export: re-check every member's consent now, then split the work into chunks.

Runs on the control queue, once per job; a redelivered planning message finds the job running and
re-nudges its pending chunks instead (any nudge claims whichever chunk is due).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from consent.services import PARTNER_VERSION, decisions_for_members
from exports import deleted, files, planning, rules
from exports.kind import EXPORT
from exports.models import ExportChunk, ExportJob
from exports.params import JobParams
from matching.models import GroupMember, MemberMatchGroup
from pdex import audit
from pdex.fhir import outcome_issue
from pdex.jobs import engine
from pdex.lookups import bigint_array
from pdex.models import Member


def job_params(job: ExportJob) -> JobParams:
    return JobParams.from_json(job.params, request_time=job.transaction_time)


def candidate_members(job: ExportJob, params: JobParams) -> tuple[list[int], list[dict[str, Any]]]:
    """The members the request names (Group members; for the system $export the members of all the partner's
    match Groups; for Patient/$export the partner's consented members), narrowed by the `patient` parameter;
    plus one issue per `patient` reference that is not among them."""
    if job.group_id is not None:
        pool = GroupMember.objects.filter(group_id=job.group_id).values_list("member_id", flat=True)
    elif job.kind == ExportJob.Kind.SYSTEM:
        pool = GroupMember.objects.filter(group__partner_id=job.partner_id,
                                          group__code=MemberMatchGroup.Code.MATCH).values_list("member_id", flat=True)
    else:
        pool = job.partner.consents.values_list("member_id", flat=True)
    member_ids = set(pool)
    issues: list[dict[str, Any]] = []
    if params.patients:
        by_fhir_id = dict(Member.objects.filter(fhir_id__in=[p.split("/")[-1] for p in params.patients])
                          .values_list("fhir_id", "id"))
        chosen: set[int] = set()
        for index, reference in enumerate(params.patients):
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


# Members judged (consent) and counted (rows per type) per batch: planning memory does not grow with the export.
PLAN_BATCH = 2000


def member_rows(member_ids: list[int], include_sensitive: dict[int, bool],
                resource_types: list[str]) -> list[planning.MemberRows]:
    """Each member's stored rows per requested member type (an index-only count), in member-id order."""
    counts: dict[int, dict[str, int]] = {m: {} for m in member_ids}
    if member_ids and resource_types:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT member_id, resource_type, count(*) FROM pdex_resource"
                " WHERE member_id = ANY(%s::bigint[]) AND resource_type = ANY(%s) GROUP BY 1, 2",
                [member_ids, resource_types])
            for member_id, resource_type, rows in cursor.fetchall():
                counts[member_id][resource_type] = rows
    return [planning.MemberRows(m, include_sensitive[m], counts[m]) for m in sorted(member_ids)]


def plan(job_id: uuid.UUID | str, *, now: datetime | None = None) -> list[int]:
    """Re-check every member's consent now, create the job's chunks and nudge one worker per chunk; returns
    the chunk ids. A job that is no longer queued is left alone (a running one has its pending chunks nudged
    again). A job with nothing to export is finalized at once.

    Members are taken PLAN_BATCH at a time: consent decided, rows counted, fed to the planner, the chunks it
    cut inserted — so memory is one batch and the open chunks, however many members the export has.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # The partner row's version comes with the partner the decisions below use (consent.services).
        job = ExportJob.objects.select_for_update().select_related("partner").annotate(
            planned_partner_version=PARTNER_VERSION).get(pk=job_id)
        if job.status == ExportJob.Status.RUNNING:
            pending = list(job.chunks.filter(status=ExportChunk.Status.PENDING).values_list("id", flat=True))
            engine.nudge_on_commit(EXPORT.run_task, times=len(pending))
            return pending
        if job.status != ExportJob.Status.QUEUED:
            return []
        params = job_params(job)
        member_ids, issues = candidate_members(job, params)
        types = planning.member_types(params.types or rules.EXPORT_TYPES)
        planner = planning.ChunkPlanner(types, target_rows=settings.EXPORT_CHUNK_ROWS,
                                        max_members=settings.EXPORT_CHUNK_MEMBERS, line_bytes=files.line_bytes())
        excluded: Counter[str] = Counter()
        allowed = 0
        created: list[int] = []

        def insert(chunks: list[planning.PlannedChunk]) -> None:
            rows = ExportChunk.objects.bulk_create([
                ExportChunk(job=job, sequence=c.sequence, resource_type=c.resource_type,
                            resource_types=list(c.resource_types), member_ids=bigint_array(c.member_ids),
                            regular_member_ids=bigint_array(c.regular_member_ids),
                            consent_versions=bigint_array(versions[m] for m in c.member_ids)) for c in chunks])
            created.extend(row.id for row in rows)

        planned: dict[int, bool] = {}  # every member let in, and whether with sensitive data (the `deleted` file)
        versions: dict[int, int] = {}  # the consent version each member was let in on
        for start in range(0, len(member_ids), PLAN_BATCH):
            batch = member_ids[start:start + PLAN_BATCH]
            decisions = decisions_for_members(job.partner, batch, now=now, versions=versions)
            include_sensitive = {m: d.include_sensitive for m, d in decisions.items() if d.allowed}
            planned.update(include_sensitive)
            excluded.update(str(d.reason) for d in decisions.values() if not d.allowed)
            allowed += len(include_sensitive)
            cut: list[planning.PlannedChunk] = []
            for member in member_rows(list(include_sensitive), include_sensitive, types):
                cut += planner.add(member)
            insert(cut)
        insert(planner.finish())
        for reason, count in sorted(excluded.items()):
            # Counts and reasons only: the error file names no member (spec §5.7 rule 4).
            issues.append(outcome_issue(
                "warning", "suppressed",
                f"{count} member(s) excluded from this export: consent {reason} at export time."))
        job.status = ExportJob.Status.RUNNING
        job.started_at = now
        job.progress_total = len(created)
        job.progress_done = 0
        job.member_count = allowed
        job.planning_messages = issues
        job.partner_version = job.planned_partner_version
        deleted.write_deleted_file(job, planned, params)  # `_since` only: the manifest's `deleted`
        if not created:
            job.finalize_started_at = now
            engine.nudge_on_commit(EXPORT.finish_task, str(job.id))
        job.save(update_fields=["status", "started_at", "progress_total", "progress_done", "member_count",
                                "planning_messages", "finalize_started_at", "partner_version"])
        engine.nudge_on_commit(EXPORT.run_task, times=len(created))
    audit.record("export-plan", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}",
                 detail={"members": allowed, "excluded": sum(excluded.values()), "chunks": len(created)})
    return created
