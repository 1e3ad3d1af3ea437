"""A pull as a job of the engine (pdex.jobs.engine): rows are the truth, steps are leased units, every task is
safe to run twice.

    start (web, beat, command) ──plan──▶ running, stage match: one unit
    match unit: $bulk-member-match kicked off, polled (Deferred by Retry-After, 429), the three Groups read
    ──advance──▶ stage export: one unit: $davinci-data-export of the MatchedMembers Group, polled
    ──advance──▶ stage download: one unit per file of the manifest (and its error files), run in parallel by
                 whichever workers claim them: downloaded, counted, validated, taken in batch by batch
    ──advance──▶ stage provenance: their Provenance files, once the resources they name are in
    ──advance──▶ completed: counts summed, each member's next pull scheduled

`advance` is the engine's finish task: the unit that completes a stage's count asks for it, exactly once, and
it adds the next stage's units (or completes the job) under the job's row lock. A worker killed mid-file
loses its lease; the next claim downloads that file again, and what the killed one had already stored is
recognised as this pull's (`store_received(fresh_since=…)`), so nothing is taken in twice and nothing lost.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from pdex import audit
from pdex.jobs import asyncstatus, engine
from pdex.jobs.engine import Finished, UnitOutcome
from requesting.client import Refused
from requesting.kind import PULL
from requesting.models import CollectedConsent, MemberLink, PullJob, PullMember, PullUnit
from requesting.pull import steps
from requesting.pull.start import start_pull
from requesting.schedule import next_pull_for

log = logging.getLogger(__name__)

# What our staff should do about a member the previous payer did not match (the reason is never in a Group).
ACTIONS = {
    PullMember.Outcome.NO_MATCH:
        "Not found at the previous payer: check the old card's member id and subscriber id, and the member's name "
        "and birth date, with the member; correct the consent's old-card facts and the next pull asks again.",
    PullMember.Outcome.CONSENT_CONSTRAINED:
        "Found, but the previous payer cannot honour the consent (its period, a #regular policy it cannot "
        "segment, or a block of its own): ask the member for a new consent (a #sensitive one if they agree).",
    "single": "The previous payer's $member-match did not match (it does not say whether no one, several people "
              "or a consent it cannot honour): check the old card with the member.",
    "no-patient": "We hold no Patient record for this member: complete enrollment before the next pull.",
    "not-asked": "Not asked: the consent was revoked or ended before the match was sent.",
}
FILE_STAGES = {PullJob.Stage.DOWNLOAD: False, PullJob.Stage.PROVENANCE: True}


def plan(job_id: str, *, now: datetime | None = None) -> int:
    """queued → running with its match unit; a redelivered plan nudges the pending units again."""
    now = now or timezone.now()
    with transaction.atomic():
        job = PullJob.objects.select_for_update().get(pk=job_id)
        if job.status == PullJob.Status.RUNNING:
            pending = job.units.filter(status=PullUnit.Status.PENDING).count()
            engine.nudge_on_commit(PULL.run_task, times=pending)
            return pending
        if job.status != PullJob.Status.QUEUED:
            return 0
        PullUnit.objects.create(job=job, sequence=0, step=PullUnit.Step.MATCH)
        PullJob.objects.filter(pk=job.pk).update(status=PullJob.Status.RUNNING, started_at=now, progress_total=1,
                                                 stage=PullJob.Stage.MATCH, finalize_started_at=None)
        engine.nudge_on_commit(PULL.run_task)
    return 1


STEPS = {PullUnit.Step.MATCH: steps.match_step, PullUnit.Step.EXPORT: steps.export_step,
         PullUnit.Step.FILE: steps.file_step}


def work(unit: PullUnit, beat) -> object:
    """The unit's step; a refusal of the previous payer fails the whole pull with its reason."""
    try:
        return STEPS[unit.step](unit, beat)
    except Refused as exc:
        engine.fail_job(PULL, unit.job_id, f"{unit.job.previous_payer.name} refused: {exc}", code="processing")
        return None


def record(unit: PullUnit, owner: str, result: object) -> Finished:
    """The step's results, written with the unit's "done" and the job's progress in one transaction."""
    job = unit.job
    unit_fields = result.unit_fields() if isinstance(result, steps.FileDone) else {}

    def write() -> None:
        if isinstance(result, steps.MatchDone):
            record_match(job, result)
        elif isinstance(result, steps.ExportDone):
            manifest = result.manifest
            moment = manifest_instant(manifest.get("transactionTime")) if manifest else None
            PullJob.objects.filter(pk=job.pk).update(export_manifest=manifest, export_transaction_time=moment,
                                                     revoked=result.lapsed, remote_progress="export: done")

    return engine.finish(PULL, unit, owner, record=write, **unit_fields)


def manifest_instant(value: object) -> datetime | None:
    """A manifest's transactionTime as a datetime (None when absent or not an instant)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def record_match(job: PullJob, result: steps.MatchDone) -> None:
    """Each member's outcome, the links to their Patients, the counts, the Group to export."""
    pulled = {p.member.fhir_id: p for p in PullMember.objects.filter(job=job).select_related("member")}
    updates, links = [], []
    for outcome in result.outcomes:
        member = pulled.get(outcome.member_fhir_id)
        if member is None:
            continue
        member.outcome, member.their_patient_id = outcome.outcome, outcome.their_patient_id
        member.action = ACTIONS["single"] if job.single and outcome.outcome != PullMember.Outcome.MATCHED \
            else ACTIONS.get(outcome.outcome, "")
        updates.append(member)
        if outcome.outcome == PullMember.Outcome.MATCHED:
            links.append(MemberLink(previous_payer_id=job.previous_payer_id, member_id=member.member_id,
                                    their_patient_id=outcome.their_patient_id, their_umb=outcome.their_umb))
    PullMember.objects.bulk_update(updates, ["outcome", "their_patient_id", "action"], batch_size=1000)
    pending = PullMember.objects.filter(job=job, outcome=PullMember.Outcome.PENDING)
    pending.filter(member_id__in=steps.lapsed_members(job)).update(outcome=PullMember.Outcome.NOT_ASKED,
                                                                   action=ACTIONS["not-asked"])
    pending.update(outcome=PullMember.Outcome.NO_MATCH, action=ACTIONS["no-patient"])
    if links:
        MemberLink.objects.bulk_create(links, update_conflicts=True, unique_fields=["previous_payer", "member"],
                                       update_fields=["their_patient_id", "their_umb", "linked_at"])
    counts = Counter(PullMember.objects.filter(job=job).values_list("outcome", flat=True))
    PullJob.objects.filter(pk=job.pk).update(
        matched=counts[PullMember.Outcome.MATCHED], no_match=counts[PullMember.Outcome.NO_MATCH],
        consent_constrained=counts[PullMember.Outcome.CONSENT_CONSTRAINED], revoked=result.lapsed,
        matched_group_id=result.group_id, remote_progress="match: done")


def run_unit(unit_id: int | None = None, *, worker: str = "") -> UnitOutcome:
    """Claim the next unit of a pull that is due (or this one), do its step and record it."""
    return engine.run_one(PULL, work, record, worker=worker, unit_id=unit_id,
                          describe=lambda unit: f"{unit.step} {unit.resource_type}".strip())


# --- stages ----------------------------------------------------------------------------------------

def next_units(job: PullJob, stage: str, sequence: int) -> list[PullUnit]:
    """The units of `stage` (the one after the job's current stage)."""
    if stage == PullJob.Stage.EXPORT:
        return [PullUnit(job=job, sequence=sequence, step=PullUnit.Step.EXPORT)] if job.matched else []
    if stage in FILE_STAGES:
        manifest = job.export_manifest or {}
        want_provenance = FILE_STAGES[stage]
        items = [("output", item) for item in manifest.get("output") or []
                 if (item.get("type") == "Provenance") == want_provenance]
        if not want_provenance:
            items += [("error", item) for item in manifest.get("error") or []]
        return [PullUnit(job=job, sequence=sequence + n, step=PullUnit.Step.FILE, manifest_kind=kind,
                         resource_type=str(item.get("type", ""))[:64], url=str(item.get("url", "")),
                         expected_count=item.get("count") if isinstance(item.get("count"), int) else None)
                for n, (kind, item) in enumerate(items) if item.get("url")]
    return []


ORDER = [PullJob.Stage.MATCH, PullJob.Stage.EXPORT, PullJob.Stage.DOWNLOAD, PullJob.Stage.PROVENANCE,
         PullJob.Stage.DONE]


def advance(job_id: str, *, now: datetime | None = None) -> str:
    """The engine's finish: once every unit of the stage is done, add the next stage's units, or complete the
    pull. Safe twice: it acts only on a running job whose count is complete, under its row lock."""
    now = now or timezone.now()
    with transaction.atomic():
        job = PullJob.objects.select_for_update().select_related("previous_payer").get(pk=job_id)
        if job.status != PullJob.Status.RUNNING or job.progress_done < job.progress_total:
            return job.stage
        stage = job.stage
        sequence = (job.units.aggregate(last=Max("sequence"))["last"] or 0) + 1
        while stage != PullJob.Stage.DONE:
            stage = ORDER[ORDER.index(stage) + 1]
            units = next_units(job, stage, sequence)
            if units:
                PullUnit.objects.bulk_create(units)
                PullJob.objects.filter(pk=job.pk).update(stage=stage, progress_total=job.progress_total + len(units),
                                                         finalize_started_at=None)
                engine.nudge_on_commit(PULL.run_task, times=len(units))
                return stage
        complete(job, now=now)
    return PullJob.Stage.DONE


def complete(job: PullJob, *, now: datetime) -> None:
    """Sum the files' counts, schedule every member's next pull, mark the pull completed, tidy the spool."""
    received, ingested, unchanged, invalid, dropped = Counter(), Counter(), Counter(), Counter(), Counter()
    notes: list[str] = []
    for unit in job.units.filter(step=PullUnit.Step.FILE):
        if unit.manifest_kind == "error":
            notes += [f"their error file: {note}" for note in unit.notes]
            continue
        received[unit.resource_type] += unit.received
        ingested[unit.resource_type] += unit.ingested
        unchanged[unit.resource_type] += unit.unchanged
        invalid[unit.resource_type] += unit.invalid
        dropped.update(unit.dropped)
        notes += [f"{unit.resource_type}: {note}" for note in unit.notes]
    PullJob.objects.filter(pk=job.pk).update(
        stage=PullJob.Stage.DONE, received=dict(sorted(received.items())), ingested=dict(sorted(ingested.items())),
        unchanged=dict(sorted(unchanged.items())), invalid={k: v for k, v in sorted(invalid.items()) if v},
        dropped=dict(dropped), notes=notes[:200], remote_progress="")
    schedule_members(job, now=now)
    if asyncstatus.mark_completed(job, now=now):
        job.refresh_from_db()
        audit.record("p2p-pull", audit.SUCCESS, entity=f"pulljob/{job.id}", reason="completed",
                     detail={"previous_payer": job.previous_payer_id, "matched": job.matched,
                             "nomatch": job.no_match, "consentconstraint": job.consent_constrained,
                             "ingested": sum(ingested.values()), "invalid": sum(invalid.values())})
    transaction.on_commit(lambda: shutil.rmtree(Path(settings.P2P_DOWNLOAD_DIR) / str(job.id), ignore_errors=True))


def schedule_members(job: PullJob, *, now: datetime) -> None:
    """Members whose data came: `_since` for next time is this export's transactionTime. Everyone's next pull
    follows the schedule; a consent changed during the pull (revoked, replaced) keeps what that change set."""
    exported = job.export_transaction_time is not None
    for pulled in (PullMember.objects.filter(job=job, consent__updated_at__lte=job.created_at)
                   .select_related("consent")):
        consent: CollectedConsent = pulled.consent
        fields = {"last_pulled_at": now, "next_pull_at": next_pull_for(consent, after=now)}
        if exported and pulled.outcome == PullMember.Outcome.MATCHED:
            fields["last_transaction_time"] = job.export_transaction_time
        CollectedConsent.objects.filter(pk=consent.pk).update(**fields)


def rerun(job_id: str, *, actor: str = "admin") -> PullJob | None:
    """A failed or completed pull again, as a new pull of the same members (their consents re-checked), from
    the same `_since`: the previous payer's jobs are not ours to restart."""
    job = PullJob.objects.select_related("previous_payer").get(pk=job_id)
    if job.status not in (PullJob.Status.FAILED, PullJob.Status.COMPLETED):
        return None
    consents = [p.consent for p in job.pull_members.select_related("consent")]
    return start_pull(job.previous_payer, consents=consents, trigger=PullJob.Trigger.ADMIN, since=job.since,
                      actor=actor)
