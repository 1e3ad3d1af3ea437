"""Starting a pull: which of our members to ask a previous payer about, and with which `_since`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from pdex import audit
from pdex.jobs import engine
from requesting.consents import valid_on
from requesting.kind import PULL
from requesting.models import CollectedConsent, PreviousPayer, PullJob, PullMember

IN_PROGRESS = (PullJob.Status.QUEUED, PullJob.Status.RUNNING)
# The single-member route needs both ends: $member-match, then Patient/$export of that member.
SINGLE_OPERATIONS = {"member-match", "export"}


class CannotPull(RuntimeError):
    """Nothing to pull, or not from this payer yet: the message says why."""


def members_in_progress(payer: PreviousPayer) -> set[int]:
    return set(PullMember.objects.filter(job__previous_payer=payer, job__status__in=IN_PROGRESS)
               .values_list("member_id", flat=True))


def start_pulls(payer: PreviousPayer, *, consents: Iterable[CollectedConsent] | None = None,
                trigger: str = PullJob.Trigger.ADMIN, full: bool = False, actor: str = "",
                now: datetime | None = None) -> list[PullJob]:
    """Pull the members whose consent for `payer` is valid now (or those of `consents` still valid), minus
    members already in a pull under way: one pull per last transactionTime, so each is incremental with the
    `_since` its members share, and members never pulled (or all of them, when `full`) get everything."""
    now = now or timezone.now()
    if not payer.can_pull:
        raise CannotPull(f"{payer.name}: register with it first (no client id), or make it active")
    chosen = valid_on(now.date()).filter(previous_payer=payer)
    if consents is not None:
        chosen = chosen.filter(pk__in=[c.pk for c in consents])
    busy = members_in_progress(payer)
    groups: dict[datetime | None, list[CollectedConsent]] = {}
    for consent in chosen.select_related("member").order_by("member_id"):
        if consent.member_id not in busy:
            groups.setdefault(None if full else consent.last_transaction_time, []).append(consent)
    first_pulls = groups.pop(None, [])
    ordered = ([(None, first_pulls)] if first_pulls else []) + sorted(groups.items())
    return [start_pull(payer, consents=group, since=since, trigger=trigger, actor=actor) for since, group in ordered]


def start_pull(payer: PreviousPayer, *, consents: list[CollectedConsent], since: datetime | None,
               trigger: str = PullJob.Trigger.ADMIN, actor: str = "") -> PullJob:
    """One queued pull of these members with this `_since` (None: everything)."""
    single = len(consents) == 1 and SINGLE_OPERATIONS <= set(payer.operations or ())
    with transaction.atomic():
        job = PullJob.objects.create(previous_payer=payer, trigger=trigger, since=since, single=single,
                                     members=len(consents))
        PullMember.objects.bulk_create([PullMember(job=job, member_id=c.member_id, consent=c) for c in consents],
                                       batch_size=2000)
        engine.nudge_on_commit(PULL.plan_task, str(job.id))
    audit.record("p2p-pull", audit.SUCCESS, entity=f"pulljob/{job.id}", reason=f"started ({trigger})",
                 detail={"previous_payer": payer.pk, "members": len(consents), "single": single,
                         "since": since.isoformat() if since else None, "by": actor})
    return job
