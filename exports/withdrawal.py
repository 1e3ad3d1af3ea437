"""Nothing more of a member leaves once their consent ends (revoked, expired) or they block sharing.

Three gates, each a few queries over the members concerned (docs/consent.md, "The guarantee"; only members whose
consent may have changed since the plan are judged again, `_to_judge`):

- a chunk re-checks its members' consent when it starts (`live_members`) and writes only those still allowed;
- the finalize re-checks every member the job wrote, and a download every member the file holds: a member
  whose consent ended since withdraws the job (`withdraw`) — its files go, and it re-runs in place without
  the member under the same status URL (the client sees 202 again); its error file counts the members
  withdrawn, never names them;
- a revocation or a block withdraws at once the completed jobs that hold the member (`on_sharing_ended`), so
  files handed out at presigned storage URLs, which never pass our download gate, go too.

Which members a file holds is asked in one place, `members_in_file` (and `members_in_job`): the chunks
whose segments a published file joined (exports.files, ExportFilePart).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from consent.decision import Decision
from consent.services import decisions_for_members, unsettled_members
from exports.kind import EXPORT
from exports.models import ExportChunk, ExportFilePart, ExportJob
from pdex import audit
from pdex.fhir import Gone
from pdex.jobs import asyncstatus, engine
from pdex.jobs.models import OutputFile
from pdex.models import Partner

log = logging.getLogger(__name__)

WITHDRAWN_TEXT = ("This file is no longer available: data in it may no longer be shared. The export is being "
                  "produced again; poll its status URL.")


# --- which members a file holds ----------------------------------------------------------------------

def _written(member_ids: Sequence[int], versions: Sequence[int], withdrawn: Iterable[int]) -> dict[int, int]:
    """A chunk's written members → the consent version the plan judged (0, never a version, for a chunk planned
    before versions were kept)."""
    if len(versions) != len(member_ids):
        versions = [0] * len(member_ids)
    left_out = set(withdrawn)
    return {m: v for m, v in zip(member_ids, versions, strict=True) if m not in left_out}


def members_in_file(output: OutputFile) -> dict[int, int]:
    """The members whose lines (or whose resources' Provenance) `output` holds, each with the consent version
    the plan judged: the members the chunks whose segments it joined wrote (exports.files, ExportFilePart), less
    those a chunk left out as it started. Empty for shared types and the error file. One query."""
    if output.kind != OutputFile.Kind.OUTPUT:
        return {}
    members: dict[int, int] = {}
    for row in ExportChunk.objects.filter(file_parts__output_file_id=output.id).distinct(
            ).values_list("member_ids", "consent_versions", "withdrawn_member_ids"):
        members.update(_written(*row))
    return members


def members_in_job(job_id: uuid.UUID | str) -> dict[int, int]:
    """Every member some done chunk of the job wrote, with the consent version the plan judged."""
    members: dict[int, int] = {}
    for row in ExportChunk.objects.filter(job_id=job_id, status=ExportChunk.Status.DONE).values_list(
            "member_ids", "consent_versions", "withdrawn_member_ids"):
        members.update(_written(*row))
    return members


def jobs_holding(member_ids: Iterable[int], partner_id: int | None) -> list[uuid.UUID]:
    """The completed jobs (of `partner_id`, or of any partner) whose files hold any of these members."""
    chunks = ExportChunk.objects.filter(job__status=ExportJob.Status.COMPLETED, status=ExportChunk.Status.DONE,
                                        member_ids__overlap=list(member_ids))
    if partner_id is not None:
        chunks = chunks.filter(job__partner_id=partner_id)
    return list(chunks.values_list("job_id", flat=True).distinct())


# --- the consent of members now ------------------------------------------------------------------------

@dataclass(frozen=True)
class LiveMembers:
    """A chunk's members as their consent stands when it starts."""

    member_ids: list[int]  # still allowed: the chunk writes these
    regular_member_ids: list[int]  # of those, the ones whose sensitive data is withheld
    withdrawn: list[int]  # consent ended (or blocked) since planning: nothing of theirs is written


def live_members(partner: Partner, member_ids: Sequence[int], regular: Iterable[int], *,
                 now: datetime | None = None, versions: Sequence[int] = (),
                 partner_judged: int | None = None) -> LiveMembers:
    """Re-run the consent decision for a chunk's members; a consent narrowed to `#regular` since planning
    narrows the chunk too. `versions` (in member order) and `partner_judged`: the consent and partner row
    versions the plan let them in on; then only members whose consent may have changed since are judged again
    (the others' decision is the plan's)."""
    member_ids = list(member_ids)
    judged = _to_judge(partner, _written(member_ids, versions, ()), partner_judged=partner_judged, now=now)
    decisions = decisions_for_members(partner, judged, now=now) if judged else {}
    allowed = [m for m in member_ids if m not in decisions or decisions[m].allowed]
    planned_regular = set(regular)
    return LiveMembers(
        member_ids=allowed,
        regular_member_ids=[m for m in allowed if m in planned_regular
                            or (m in decisions and not decisions[m].include_sensitive)],
        withdrawn=[m for m in member_ids if m in decisions and not decisions[m].allowed])


def ended_members(partner: Partner, members: Mapping[int, int], *, now: datetime | None = None,
                  partner_judged: int | None = None) -> set[int]:
    """Of these members (→ the consent version the plan judged), those the partner may no longer receive.
    `partner_judged`: the partner row's version the plan judged (None: judge everyone); then only members whose
    consent may have changed since are judged again (consent.services.unsettled_members), so a gate over 10,000
    members costs a few index lookups."""
    judged = _to_judge(partner, members, partner_judged=partner_judged, now=now)
    if not judged:
        return set()
    decisions: dict[int, Decision] = decisions_for_members(partner, judged, now=now)
    return {m for m, d in decisions.items() if not d.allowed}


def _to_judge(partner: Partner, members: Mapping[int, int], *, partner_judged: int | None,
              now: datetime | None) -> set[int]:
    """The members whose decision must be made again: every one when the plan kept no partner version (a job
    planned before versions were kept), else those unsettled_members finds (a version 0 is never settled)."""
    if partner_judged is None:
        return set(members)
    return unsettled_members(partner, members, partner_judged=partner_judged, now=now)


# --- withdrawing -------------------------------------------------------------------------------------

def withdraw(job_id: uuid.UUID | str, *, now: datetime | None = None, trigger: str = "") -> int:
    """If members the job wrote may no longer go to its partner: drop its files and chunks and run it again in
    place (queued, same status URL, same request time, so the same window); returns how many were withdrawn.

    Only a running job at its finalize or a completed one is withdrawn (a cancelled or failed one serves
    nothing); the re-plan re-checks consent, so the members are left out, and is counted in the error file.
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = ExportJob.objects.select_for_update().select_related("partner").filter(pk=job_id).first()
        if job is None or job.status not in (ExportJob.Status.RUNNING, ExportJob.Status.COMPLETED):
            return 0
        ended = ended_members(job.partner, members_in_job(job.id), now=now, partner_judged=job.partner_version)
        if not ended:
            return 0
        job.chunks.all().delete()
        ExportFilePart.objects.filter(job=job).delete()  # the shared resources' segments too
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.QUEUED, progress_done=0, progress_total=0, error=None, started_at=None,
            finished_at=None, expires_at=None, finalize_started_at=None, member_count=0, counts={}, sizes={},
            planning_messages=[], withdrawn_members=F("withdrawn_members") + len(ended))

        def restart() -> None:
            asyncstatus.delete_outputs(job)
            engine.nudge(EXPORT.plan_task, str(job.id))

        transaction.on_commit(restart)
        # Counts only, as in the error file: the audit trail names the job, its partner and why.
        audit.record("export-withdraw", audit.SUCCESS, partner=job.partner, entity=f"exportjob/{job.id}",
                     reason=f"consent ended for {len(ended)} member(s); re-run without them",
                     detail={"members": len(ended), "trigger": trigger, "previous_status": job.status})
    log.info("export %s withdrawn (%d member(s), %s): re-running", job.id, len(ended), trigger,
             extra={"job": str(job.id)})
    return len(ended)


def withdraw_ended(*, now: datetime | None = None) -> list[uuid.UUID]:
    """The sweep for consents that ended without an event (their period ran out): every completed export
    still served whose members include one who may no longer receive it is withdrawn; returns those jobs."""
    now = now or timezone.now()
    withdrawn = []
    live = ExportJob.objects.filter(status=ExportJob.Status.COMPLETED, expires_at__gt=now)
    for job_id in list(live.values_list("id", flat=True)):
        if withdraw(job_id, now=now, trigger="expiry sweep"):
            withdrawn.append(job_id)
    return withdrawn


def check_download(job: ExportJob, output: OutputFile) -> None:
    """The download gate (pdex.jobs.kinds `download_check`): a file holding a member whose consent has ended
    is not served — 410, naming nobody — and its job is withdrawn and re-run."""
    members = members_in_file(output)
    if members and ended_members(job.partner, members, partner_judged=job.partner_version):
        withdraw(job.id, trigger="download")
        raise Gone(WITHDRAWN_TEXT, audit_reason="file withdrawn: consent ended for a member it holds",
                   audit_entity=f"OutputFile/{output.id}")


def on_sharing_ended(sender, *, member_ids: list[int], partner_id: int | None, **kwargs) -> None:
    """A revocation or block: withdraw at once the completed jobs that hold the member (consent.signals)."""
    for job_id in jobs_holding(member_ids, partner_id):
        withdraw(job_id, trigger="revocation or block")


def error_issue_text(job: ExportJob) -> str:
    """The error file's line for the withdrawals: how many, never who."""
    return (f"{job.withdrawn_members} member(s) withdrawn from this export after it had begun: their consent "
            "ended or sharing was blocked; the export was produced again without them.")
