"""The job engine every asynchronous operation runs on (bulk member match, exports).

Job and unit rows in PostgreSQL are the truth; a Celery message only says "there is work of this kind"
(a nudge), and every step may run twice.

    job queued ──plan (control queue)──▶ running, units pending ──each unit claimed, worked, finished
    (its kind's queue)──▶ the unit that brings progress to its total asks for the finish (control queue)
    ──finish──▶ completed

A worker takes the next unit by claiming it in one statement (`FOR UPDATE SKIP LOCKED`): a pending unit,
or one whose lease expired because its worker died or froze — never one another worker holds. It renews
the lease while it works (`heartbeat`); a failed attempt goes back with a back-off (`release`), and a unit
out of attempts fails its job. Because any nudge claims whichever unit is due, a unit whose worker froze is
taken over by the next worker that asks for work, without waiting for its own message to come round. The
sweep (maintenance queue, `sweep`) re-sends what lost its message: expired and stalled units, plans that
never ran, finishes that never ended.

An app registers each kind of job (its job and unit models, its tasks) with `register` in its
AppConfig.ready(); the status URL (pdex.jobs.asyncstatus) and the sweep serve every registered kind.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from pdex import audit, logcontext
from pdex.fhir import operation_outcome, outcome_issue
from pdex.jobs import asyncstatus
from pdex.jobs.kinds import JobKind, kinds
from pdex.jobs.models import AsyncJob, WorkUnit

log = logging.getLogger(__name__)

Result = TypeVar("Result")
BACKOFF_MAX_SECONDS = 60
# At most this many nudges per kind per sweep for units whose messages were lost; more would only queue
# messages that find nothing to do (any nudge claims whichever unit is due).
SWEEP_MAX_NUDGES = 500


# --- nudges --------------------------------------------------------------------------------------

def nudge(task: str, *args: Any, times: int = 1, countdown: float | None = None) -> None:
    """Send `task` (by name, routed to its queue by CELERY_TASK_ROUTES) `times` times."""
    for _ in range(times):
        current_app.send_task(task, args=args, countdown=countdown)


def nudge_on_commit(task: str, *args: Any, times: int = 1) -> None:
    """Nudge once the current transaction commits, so the worker sees the rows it is told about."""
    if times > 0:
        transaction.on_commit(lambda: nudge(task, *args, times=times))


# --- leases ----------------------------------------------------------------------------------------

class LeaseLost(Exception):
    """Another worker took the unit over (our lease expired) or the job stopped: drop what we were doing."""


def new_lease_owner(worker: str = "") -> str:
    """A token unique to one attempt, so a worker that lost its lease can never finish the unit."""
    return f"{worker or 'worker'}:{uuid.uuid4().hex}"[:200]


def lease_expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


@contextmanager
def bookkeeping() -> Iterator[None]:
    """A transaction for unit bookkeeping whose commit does not wait for the WAL flush (~8 ms a commit here).
    Safe because every step is idempotent: if PostgreSQL lost the last commits in a crash, a lost lease or a
    lost "done" only means the unit runs again and writes the same result.

    A worker frozen inside one (SIGSTOP, a stalled VM) would hold its unit's row lock, and the claim skips
    locked rows, so its unit could never be taken over: PostgreSQL ends such a session once it has sat idle
    in the transaction for a lease's length, which releases the locks by the time the lease has expired."""
    idle_ms = max(settings.JOB_LEASE_SECONDS, 1) * 1000
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF; "
                           f"SET LOCAL idle_in_transaction_session_timeout = {int(idle_ms)}")
        yield


def claim(kind: JobKind, owner: str, *, unit_id: int | None = None, job_id: Any = None,
          now: datetime | None = None) -> WorkUnit | None:
    """Lease the next unit due (or the one named), if its job is running; None when nothing is due.

    Due: pending and past its back-off, or running under an expired lease, with attempts left. Which job's
    unit goes next (docs/service-levels.md): urgent jobs first; then the job whose partner has the fewest
    units running now, over every kind of job, so one partner's 100,000-member export cannot hold back
    another's 10-member one; then the earliest deadline, the oldest request; a job's units in order.

    One statement, fast however many units are pending: the running jobs (a few) are sorted first, then
    each is probed in that order for its first unit due, on a partial index of open units, until one is
    found — a unit another claimer holds is skipped (`SKIP LOCKED`), so two workers never hold one unit.
    """
    now = now or timezone.now()
    sql = claim_statement(kind, by_unit=unit_id is not None, by_job=job_id is not None)
    with bookkeeping(), connection.cursor() as cursor:
        cursor.execute(sql, claim_parameters(owner=owner, now=now, unit_id=unit_id, job_id=job_id))
        row = cursor.fetchone()
    if row is None:
        return None
    related = ("job", "job__partner") if kind.partner_facing else ("job",)
    unit = kind.units.objects.select_related(*related).get(pk=row[0])
    logcontext.bind(request_id=unit.job.request_id, job=str(unit.job_id))
    return unit


def claim_statement(kind: JobKind, *, by_unit: bool = False, by_job: bool = False) -> str:
    """The claim's one statement for `kind` (scripts/explain_claim.py prints its plan on a large table)."""
    units, jobs = kind.units._meta.db_table, kind.jobs._meta.db_table
    narrow_job = "AND j.id = %(job)s " if by_job else ""
    narrow_unit = "AND u.id = %(unit)s " if by_unit else ""
    # Units running under a live lease, per partner, over every kind: what "fewest running" counts. A job
    # without a partner (a pull of the requesting side) counts for nobody and waits behind nobody's load.
    running = " UNION ALL ".join(_running_units(k) for k in _all_kinds(kind) if k.partner_facing) or \
        "SELECT NULL::bigint AS partner_id WHERE false"
    partner = "j.partner_id" if kind.partner_facing else "NULL::bigint"
    # Table names come from our models; every value is a bound parameter.
    return f"""
        WITH load AS (SELECT partner_id, count(*) AS units FROM ({running}) busy GROUP BY partner_id),
        next AS (
            SELECT unit.id FROM (
                SELECT j.id, j.priority, j.deadline, j.created_at, coalesce(load.units, 0) AS partner_running
                  FROM {jobs} j LEFT JOIN load ON load.partner_id = {partner}
                 WHERE j.status = %(job_running)s {narrow_job}
                 -- Sorted here, so the probe below runs job after job only until one has a unit due.
                 ORDER BY j.priority DESC, partner_running, j.deadline, j.created_at, j.id) j
            CROSS JOIN LATERAL (
                SELECT u.id FROM {units} u
                 WHERE u.job_id = j.id AND u.status IN (%(pending)s, %(running)s)
                   AND u.attempts < %(max_attempts)s
                   AND (u.status = %(pending)s OR u.lease_expires < %(now)s)
                   AND (u.not_before IS NULL OR u.not_before <= %(now)s) {narrow_unit}
                 ORDER BY u.sequence LIMIT 1 FOR UPDATE SKIP LOCKED) unit
             ORDER BY j.priority DESC, j.partner_running, j.deadline, j.created_at, j.id
             LIMIT 1)
        UPDATE {units} u
           SET status = %(running)s, lease_owner = %(owner)s, lease_expires = %(expires)s,
               attempts = u.attempts + 1, started_at = %(now)s, not_before = NULL, error = ''
          FROM next WHERE u.id = next.id
        RETURNING u.id"""  # noqa: S608


def claim_parameters(*, owner: str, now: datetime, unit_id: int | None = None, job_id: Any = None) -> dict[str, Any]:
    """The bound values of the claim statement (scripts/explain_claim.py shows its plan with them)."""
    return {
        "job_running": AsyncJob.Status.RUNNING, "max_attempts": settings.JOB_MAX_ATTEMPTS,
        "pending": WorkUnit.Status.PENDING, "running": WorkUnit.Status.RUNNING, "now": now,
        "owner": owner, "expires": lease_expiry(now), "unit": unit_id, "job": job_id,
    }


def _running_units(kind: JobKind) -> str:
    """The partner of every unit of `kind` running under a live lease (table names from our models)."""
    units, jobs = kind.units._meta.db_table, kind.jobs._meta.db_table
    return (f"SELECT rj.partner_id FROM {units} ru JOIN {jobs} rj ON rj.id = ru.job_id "  # noqa: S608
            "WHERE ru.status = %(running)s AND ru.lease_expires >= %(now)s")


def _all_kinds(kind: JobKind) -> list[JobKind]:
    """Every registered kind, `kind` among them even when it was never registered (tests of one kind)."""
    found = kinds()
    return found if kind in found else [*found, kind]


def heartbeat(kind: JobKind, unit_id: int, owner: str, *, now: datetime | None = None) -> None:
    """Extend our lease; LeaseLost when it is no longer ours or the job was cancelled meanwhile."""
    now = now or timezone.now()
    with bookkeeping():
        kept = kind.units.objects.filter(
            pk=unit_id, lease_owner=owner, status=WorkUnit.Status.RUNNING, job__status=AsyncJob.Status.RUNNING,
        ).update(lease_expires=lease_expiry(now))
    if not kept:
        raise LeaseLost(f"{kind.unit_model} {unit_id} is no longer leased by {owner}")


def backoff_seconds(attempts: int) -> int:
    return min(2 ** attempts, BACKOFF_MAX_SECONDS)


class Deferred(Exception):
    """Raised by a unit's work that must wait on something outside (another server's job, its Retry-After):
    the unit goes back, due again in `seconds`, and the wait is not counted as a failed attempt."""

    def __init__(self, seconds: float, note: str = ""):
        super().__init__(note or f"due again in {seconds:.0f} s")
        self.seconds = max(float(seconds), 0.0)
        self.note = note


def defer(kind: JobKind, unit_id: int, owner: str, seconds: float, *, note: str = "",
          now: datetime | None = None) -> bool:
    """Give a unit back without counting the attempt, not to be claimed again before `seconds` have passed.
    False when the lease was no longer ours."""
    now = now or timezone.now()
    with bookkeeping():
        return bool(kind.units.objects.filter(pk=unit_id, lease_owner=owner, status=WorkUnit.Status.RUNNING).update(
            status=WorkUnit.Status.PENDING, lease_owner="", lease_expires=None,
            not_before=now + timedelta(seconds=seconds), attempts=F("attempts") - 1, error=note[:2000]))


def release(kind: JobKind, unit_id: int, owner: str, error: str, *, describe: str = "",
            now: datetime | None = None) -> int:
    """Give a failed attempt back: pending again after a back-off while attempts remain, else failed (and so
    its job). Returns the attempts used so far (0 when the lease was no longer ours)."""
    now = now or timezone.now()
    unit = kind.units.objects.filter(pk=unit_id, lease_owner=owner).first()
    if unit is None:
        return 0
    exhausted = unit.attempts >= settings.JOB_MAX_ATTEMPTS
    kind.units.objects.filter(pk=unit_id, lease_owner=owner, status=WorkUnit.Status.RUNNING).update(
        status=WorkUnit.Status.FAILED if exhausted else WorkUnit.Status.PENDING, lease_owner="",
        lease_expires=None, not_before=None if exhausted else now + timedelta(seconds=backoff_seconds(unit.attempts)),
        error=error[:2000])
    if exhausted:
        part = f"A part of the {kind.title}" + (f" ({describe})" if describe else "")
        fail_job(kind, unit.job_id, f"{part} failed {unit.attempts} times; the {kind.title} was stopped.", now=now)
    return unit.attempts


@dataclass(frozen=True)
class Finished:
    """What finishing a unit found: whether it was the job's last, and whether the job was still running."""

    last: bool
    job_running: bool


def finish(kind: JobKind, unit: WorkUnit, owner: str, *, progress: int = 1,
           record: Callable[[], None] = lambda: None, now: datetime | None = None,
           **unit_fields: Any) -> Finished:
    """Mark the unit done, run `record` (the unit's results) and count `progress` on its job, in one transaction.

    The count lives in PostgreSQL (`UPDATE … RETURNING`), not in a Celery chord: whichever worker brings
    `progress_done` to `progress_total` asks for the finish, exactly once. LeaseLost when the unit was taken
    over before it finished (then nothing of this attempt is recorded).
    """
    now = now or timezone.now()
    with bookkeeping():
        done = kind.units.objects.filter(pk=unit.pk, lease_owner=owner, status=WorkUnit.Status.RUNNING).update(
            status=WorkUnit.Status.DONE, finished_at=now, lease_expires=None, **unit_fields)
        if not done:
            raise LeaseLost(f"{kind.unit_model} {unit.pk} was taken over before it finished")
        record()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {kind.jobs._meta.db_table}
                       SET progress_done = progress_done + %(progress)s,
                           finalize_started_at = CASE WHEN progress_done + %(progress)s >= progress_total
                                                      THEN %(now)s ELSE finalize_started_at END
                     WHERE id = %(job)s AND status = %(running)s
                 RETURNING progress_done, progress_total""",  # noqa: S608
                {"progress": progress, "now": now, "job": unit.job_id, "running": AsyncJob.Status.RUNNING})
            row = cursor.fetchone()
    if row is None:
        return Finished(last=False, job_running=False)
    last = row[0] >= row[1]
    if last:
        nudge_on_commit(kind.finish_task, str(unit.job_id))
    return Finished(last=last, job_running=True)


# --- one unit of work ----------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitOutcome:
    """What one delivery of a unit task did; `retry_in` asks the task to nudge again after that long."""

    state: str  # idle, lost, deferred, retry, failed, done, last, cancelled
    unit_id: int | None = None
    retry_in: int | None = None


def run_one(kind: JobKind, work: Callable[[WorkUnit, Callable[[], None]], Result],
            finish_unit: Callable[[WorkUnit, str, Result], Finished], *, worker: str = "",
            unit_id: int | None = None, describe: Callable[[WorkUnit], str] = lambda unit: "") -> UnitOutcome:
    """Claim a unit, `work(unit, heartbeat)` on it, then `finish_unit(unit, owner, result)`.

    Any failure gives the lease back and counts the attempt; a lost lease drops the work silently (the
    worker that took the unit over will write it).
    """
    owner = new_lease_owner(worker)
    unit = claim(kind, owner, unit_id=unit_id)
    if unit is None:
        return UnitOutcome("idle")  # done, held by a live lease, out of attempts, or the job stopped
    began = time.perf_counter()
    try:
        result = work(unit, lambda: heartbeat(kind, unit.pk, owner))
        finished = finish_unit(unit, owner, result)
    except LeaseLost:
        return UnitOutcome("lost", unit.pk)
    except Deferred as wait:
        if not defer(kind, unit.pk, owner, wait.seconds, note=wait.note):
            return UnitOutcome("lost", unit.pk)
        return UnitOutcome("deferred", unit.pk, retry_in=max(1, round(wait.seconds)))
    except Exception as exc:  # any failure must give the lease back and count the attempt
        log.exception("%s %s failed", kind.unit_model, unit.pk)
        attempts = release(kind, unit.pk, owner, f"{type(exc).__name__}: {exc}", describe=describe(unit))
        if attempts and attempts < settings.JOB_MAX_ATTEMPTS:
            return UnitOutcome("retry", unit.pk, retry_in=backoff_seconds(attempts))
        return UnitOutcome("failed", unit.pk)
    if not finished.job_running:
        return UnitOutcome("cancelled", unit.pk)
    log.info("%s %s of %s %s done in %.2f s", kind.unit_model, unit.pk, kind.title, unit.job_id,
             time.perf_counter() - began, extra={"unit": unit.pk, "sequence": unit.sequence})
    return UnitOutcome("last" if finished.last else "done", unit.pk)


# --- the end of a job ----------------------------------------------------------------------------

def fail_job(kind: JobKind, job_id: Any, diagnostics: str, *, code: str = "exception",
             now: datetime | None = None) -> bool:
    """The job ends as failed with an OperationOutcome (the status URL answers with it); audited once."""
    jobs = kind.jobs.objects.select_related("partner") if kind.partner_facing else kind.jobs.objects
    job = jobs.filter(pk=job_id).first()
    if job is None:
        return False
    failed = asyncstatus.mark_failed(job, operation_outcome(outcome_issue("error", code, diagnostics)), now=now)
    if failed:
        audit.record(kind.audit_action, audit.FAILED, partner=getattr(job, "partner", None),
                     entity=f"{job._meta.model_name}/{job.id}", reason=diagnostics[:500])
    return failed


# --- recovery ------------------------------------------------------------------------------------

@dataclass
class Sweep:
    """What one sweep found and nudged again, per kind (by job model label)."""

    units: dict[str, list[int]] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    finishes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.units.values()) + len(self.plans) + len(self.finishes)


def sweep(*, now: datetime | None = None, send: bool = True) -> Sweep:
    """Find work that lost its worker or its message, and nudge it again (`send=False`: only report).

    - a unit under an expired lease: its worker died or froze; with attempts left it is nudged (the next
      claim takes it over), out of attempts it fails its job;
    - pending units of a kind where nothing moved for a lease's length: their messages were lost with a
      worker killed outright (its reserved messages stay unacknowledged until the visibility timeout);
    - a job still queued a lease after it was created: its plan message was lost;
    - a finish begun a lease ago on a job still running: the worker finishing it died.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.JOB_LEASE_SECONDS)
    found = Sweep()
    for kind in kinds():
        units, jobs = kind.units, kind.jobs
        live = units.objects.filter(job__status=AsyncJob.Status.RUNNING)
        expired = live.filter(status=WorkUnit.Status.RUNNING, lease_expires__lt=now)
        due: list[int] = []
        for unit_id, job_id, attempts in expired.values_list("id", "job_id", "attempts"):
            if attempts >= settings.JOB_MAX_ATTEMPTS:
                units.objects.filter(pk=unit_id).update(status=WorkUnit.Status.FAILED,
                                                        error="lease expired on the last attempt")
                if fail_job(kind, job_id, f"A part of the {kind.title} did not finish in {attempts} attempts; "
                                          f"the {kind.title} was stopped.", now=now):
                    found.failed.append(str(job_id))
            else:
                due.append(unit_id)
        moving = (live.filter(Q(status=WorkUnit.Status.RUNNING, lease_expires__gte=now)
                              | Q(started_at__gte=stale_before) | Q(finished_at__gte=stale_before)).exists()
                  or jobs.objects.filter(status=AsyncJob.Status.RUNNING, started_at__gte=stale_before).exists())
        if not moving:
            pending = live.filter(status=WorkUnit.Status.PENDING).order_by("job__created_at", "sequence")
            due += pending.values_list("id", flat=True)[:SWEEP_MAX_NUDGES]
        if due:
            found.units[kind.job_model] = due
        plans = [str(pk) for pk in jobs.objects.filter(status=AsyncJob.Status.QUEUED, created_at__lt=stale_before)
                 .values_list("id", flat=True)]
        finishes = []
        for job_id in jobs.objects.filter(status=AsyncJob.Status.RUNNING, finalize_started_at__lt=stale_before
                                          ).values_list("id", flat=True):
            # Claim it again so two sweeps do not both re-send it.
            if jobs.objects.filter(pk=job_id, finalize_started_at__lt=stale_before).update(finalize_started_at=now):
                finishes.append(str(job_id))
        found.plans += plans
        found.finishes += finishes
        if send:
            nudge(kind.run_task, times=min(len(due), SWEEP_MAX_NUDGES))
            for job_id in plans:
                nudge(kind.plan_task, job_id)
            for job_id in finishes:
                nudge(kind.finish_task, job_id)
    if found.total or found.failed:
        log.info("sweep: units %s, plans %d, finishes %d, failed %d",
                 {label: len(ids) for label, ids in found.units.items()}, len(found.plans), len(found.finishes),
                 len(found.failed))
    return found
