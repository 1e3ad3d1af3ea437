"""Starting an export: one service for every kind ($davinci-data-export, $export, async $everything)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from consent.agreements import require_agreement
from exports.kind import EXPORT
from exports.models import ExportJob
from exports.params import JobParams
from matching.models import MemberMatchGroup
from pdex import audit
from pdex.fhir import TooManyRequests
from pdex.jobs import engine, servicelevels
from pdex.models import Partner

log = logging.getLogger(__name__)
ACTIVE = (ExportJob.Status.QUEUED, ExportJob.Status.RUNNING)
BUSY_RETRY_AFTER_SECONDS = 30


def start_export(*, partner: Partner, kind: str, params: JobParams, request_url: str,
                 group: MemberMatchGroup | None = None, messages: Iterable[dict[str, Any]] = (),
                 request=None, now: datetime | None = None) -> ExportJob:
    """Record a queued export and nudge the planner; 403 without a data-sharing agreement in force, 429 when
    the partner already runs enough jobs.

    The partner row is locked while counting, so two kick-offs at once cannot both slip under the limit.
    The job's transaction time is its window's request time: the two never disagree.
    """
    entity = f"Group/{group.pk}" if group else "$export" if kind == ExportJob.Kind.SYSTEM else "Patient"
    require_agreement(partner, entity=entity)
    with transaction.atomic():
        Partner.objects.select_for_update().filter(pk=partner.pk).first()
        running = ExportJob.objects.filter(partner=partner, status__in=ACTIVE).count()
        job = None
        if running < settings.EXPORT_MAX_RUNNING_JOBS:
            job = ExportJob.objects.create(
                partner=partner, kind=kind, group=group, params=params.to_json(), request_url=request_url,
                transaction_time=params.window.request_time or now or timezone.now(),
                priority=servicelevels.requested_priority(request),
                messages=[*messages, *params.window.informational_issues()])
            engine.nudge_on_commit(EXPORT.plan_task, str(job.id))
    if job is None:
        raise TooManyRequests(
            f"{running} exports are already running for this client (limit {settings.EXPORT_MAX_RUNNING_JOBS}); "
            "retry when one has finished.", retry_after=BUSY_RETRY_AFTER_SECONDS,
            audit_reason="too many running exports", audit_entity=entity,
            audit_detail={"running": running, "limit": settings.EXPORT_MAX_RUNNING_JOBS})
    audit.record("export", audit.SUCCESS, partner=partner, reason="kick-off", request=request, entity=entity,
                 detail={"job": str(job.id), "kind": kind, "types": list(params.types) or "all",
                         "priority": job.get_priority_display()})
    log.info("%s %s queued for %s (%s)", kind, job.id, entity, job.get_priority_display(),
             extra={"job": str(job.id), "partner_id": partner.pk, "priority": job.get_priority_display()})
    return job
