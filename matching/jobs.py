"""Bulk member match on the shared job engine (pdex.jobs.engine): job, batch and entry rows are the truth.

start (web) ──▶ plan (control queue): batches of MATCH_BATCH_SIZE entries ──▶ each batch claimed, matched and
recorded in one transaction (match queue) ──▶ the batch that completes the count asks for the finish
(control queue): Groups and files written, job completed. A worker killed mid-batch loses its lease; the
next claim takes the batch over and, since a batch's outcomes and consents are recorded together with its
"done", no entry is decided twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from consent import services as consent_services
from consent.agreements import require_agreement_for_match
from matching import budget, groups, store
from matching.kind import MATCH
from matching.models import MatchBatch, MatchEntry, MatchJob, MemberMatchGroup
from matching.parameters import parse_bulk
from matching.services import Evaluation, evaluate_entries, spend_budget
from pdex import audit
from pdex.jobs import asyncstatus, engine, servicelevels
from pdex.jobs.engine import Finished, UnitOutcome
from pdex.jsonbody import gc_paused
from pdex.models import Partner

log = logging.getLogger(__name__)


def start_bulk_match(*, partner: Partner, body: Any, request_url: str, request=None) -> MatchJob:
    """Validate the whole request now (4xx on structure), then queue a job of one entry per MemberBundle."""
    require_agreement_for_match(partner, entity="Patient/$bulk-member-match")
    bundles = parse_bulk(body)
    # Every submitted member may be a guess: the whole request is reserved from the failure budget before any
    # member is evaluated (429 when it does not fit); `record` gives back the members that match.
    reserved_at = time.time()
    spend_budget(partner, len(bundles))
    try:
        with transaction.atomic():
            job = MatchJob.objects.create(partner=partner, request_url=request_url, progress_total=len(bundles),
                                          priority=servicelevels.requested_priority(request))
            store.insert_entries(job.id, bundles)
            engine.nudge_on_commit(MATCH.plan_task, str(job.id))
    except Exception:
        budget.refund(partner, len(bundles), reserved_at=reserved_at)
        raise
    audit.record("bulk-member-match", audit.SUCCESS, partner=partner, entity=f"MatchJob/{job.id}",
                 reason="accepted", detail={"members": len(bundles), "priority": job.get_priority_display()},
                 request=request)
    log.info("bulk-member-match %s queued: %d members (%s)", job.id, len(bundles), job.get_priority_display(),
             extra={"job": str(job.id), "partner_id": partner.pk, "priority": job.get_priority_display()})
    return job


def plan(job_id: str, *, now: datetime | None = None) -> list[int]:
    """queued → running with one batch per MATCH_BATCH_SIZE entries, one nudge per batch; the batch ids.

    A redelivered plan finds the job running and nudges its pending batches again.
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = MatchJob.objects.select_for_update().get(pk=job_id)
        if job.status == MatchJob.Status.RUNNING:
            pending = list(job.batches.filter(status=MatchBatch.Status.PENDING).values_list("id", flat=True))
            engine.nudge_on_commit(MATCH.run_task, times=len(pending))
            return pending
        if job.status != MatchJob.Status.QUEUED:
            return []
        size = max(settings.MATCH_BATCH_SIZE, 1)
        batches = MatchBatch.objects.bulk_create([
            MatchBatch(job=job, sequence=n, start=start, end=min(start + size, job.progress_total))
            for n, start in enumerate(range(0, job.progress_total, size))])
        MatchJob.objects.filter(pk=job.pk).update(
            status=MatchJob.Status.RUNNING, started_at=now, transaction_time=job.transaction_time or now,
            finalize_started_at=None if batches else now)
        engine.nudge_on_commit(MATCH.run_task, times=len(batches))
        if not batches:
            engine.nudge_on_commit(MATCH.finish_task, str(job.id))
    return [batch.id for batch in batches]


def match(batch: MatchBatch, beat) -> list[tuple[int, Evaluation]]:
    """The batch's entries, each evaluated (match, then consent) as of the job's transaction time."""
    job = batch.job
    began = time.perf_counter()
    entries = store.pending_bundles(job.id, batch.start, batch.end)
    evaluations = evaluate_entries(job.partner, [bundle for _, _, bundle in entries],
                                   now=job.transaction_time or timezone.now())
    beat()
    log.info("bulk-member-match %s batch [%d, %d): %d members in %.2f s", job.id, batch.start, batch.end,
             len(entries), time.perf_counter() - began)
    return [(entry_id, evaluation) for (entry_id, _, _), evaluation in zip(entries, evaluations, strict=True)]


def record(batch: MatchBatch, owner: str, evaluated: list[tuple[int, Evaluation]], *,
           now: datetime | None = None) -> Finished:
    """The batch's outcomes, its members' consents and the job's counts, with the batch's "done", at once."""
    job = batch.job

    def write() -> None:
        decided = set(store.record_outcomes([entry_id for entry_id, _ in evaluated],
                                            [ev.outcome for _, ev in evaluated],
                                            [ev.member_id for _, ev in evaluated], [ev.reason for _, ev in evaluated]))
        outcomes = [ev for entry_id, ev in evaluated if entry_id in decided]
        consent_services.record_consents(job.partner, [
            consent_services.ReceivedConsent(ev.member_id, ev.consent, ev.facts, ev.decision)
            for ev in outcomes if ev.outcome == MatchEntry.Outcome.MATCHED and ev.consent is not None],
            "bulk-member-match")
        counts = Counter(ev.outcome for ev in outcomes)
        if counts[MatchEntry.Outcome.MATCHED]:
            transaction.on_commit(lambda: budget.refund(job.partner, counts[MatchEntry.Outcome.MATCHED],
                                                        reserved_at=job.created_at))
        MatchJob.objects.filter(pk=job.pk).update(
            matched=F("matched") + counts[MatchEntry.Outcome.MATCHED],
            no_match=F("no_match") + counts[MatchEntry.Outcome.NO_MATCH],
            consent_constrained=F("consent_constrained") + counts[MatchEntry.Outcome.CONSENT_CONSTRAINED])

    return engine.finish(MATCH, batch, owner, progress=batch.end - batch.start, record=write, now=now)


def run_batch(batch_id: int | None = None, *, worker: str = "") -> UnitOutcome:
    """Claim the next batch due (or this one), match and record it; the last one asks for the finish.

    The cycle collector is off meanwhile: a batch's parsed MemberBundles are some 100,000 objects, which it
    would walk every few hundred allocations while they are matched (they hold no cycles; reference counting
    frees them when the batch ends)."""
    with gc_paused():
        return engine.run_one(MATCH, match, record, worker=worker, unit_id=batch_id,
                              describe=lambda batch: f"members {batch.start}–{batch.end - 1}")


def finish(job_id: str) -> bool:
    """Build, persist and write the Groups, then mark the job completed (False if cancelled meanwhile, or
    not every batch is done). Safe twice: Groups are keyed by (job, code) and files by their keys."""
    job = MatchJob.objects.select_related("partner").get(pk=job_id)
    if job.status != MatchJob.Status.RUNNING or job.progress_done < job.progress_total:
        return False
    began = time.perf_counter()
    built = groups.build_and_store(job)
    groups.write_outputs(job, built)
    completed = asyncstatus.mark_completed(job)
    log.info("bulk-member-match %s groups and files written in %.2f s", job.id, time.perf_counter() - began)
    job.refresh_from_db()
    audit.record("bulk-member-match", audit.SUCCESS if completed else audit.REFUSED, partner=job.partner,
                 entity=f"MatchJob/{job.id}", reason="completed" if completed else "cancelled before completion",
                 detail={"matched": job.matched, "nomatch": job.no_match,
                         "consentconstraint": job.consent_constrained})
    return completed


def purge_expired_inputs(now: datetime | None = None) -> int:
    """Retention: once a match job has expired (or was cancelled), nothing of the people it was asked about is
    kept but counts and outcomes. Its entries lose their submitted MemberBundle and per-member reason (outcome
    and our member id stay), and its NonMatchedMembers and ConsentConstrainedMembers Groups — which contain the
    submitted Patients of people who are not our members, or not for this partner — are deleted. The
    MatchedMembers Group stays: it names our members, and the partner's exports use it. Safe to run again."""
    now = now or timezone.now()
    finished = Q(expires_at__lte=now, status__in=[MatchJob.Status.COMPLETED, MatchJob.Status.FAILED])
    jobs = MatchJob.objects.filter(finished | Q(status=MatchJob.Status.CANCELLED))
    with transaction.atomic():
        purged = set(MatchEntry.objects.filter(job__in=jobs).exclude(bundle={}, reason="")
                     .values_list("job_id", flat=True).distinct())
        MatchEntry.objects.filter(job_id__in=purged).update(bundle={}, reason="")
        groups_deleted, _ = MemberMatchGroup.objects.filter(job__in=jobs).exclude(
            code=MemberMatchGroup.Code.MATCH).delete()
    if purged or groups_deleted:
        log.info("match inputs purged: %d jobs, %d groups", len(purged), groups_deleted)
    return len(purged)
