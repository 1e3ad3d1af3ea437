"""One way to write the audit trail: every access and decision, granted or refused."""

from __future__ import annotations

from typing import Any

from pdex.models import AuditEvent, Partner

SUCCESS = AuditEvent.Outcome.SUCCESS
REFUSED = AuditEvent.Outcome.MINOR_FAILURE
FAILED = AuditEvent.Outcome.SERIOUS_FAILURE


def client_ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(action: str, outcome: str, *, partner: Partner | None = None, client_id: str = "", reason: str = "",
           entity: str = "", detail: dict[str, Any] | None = None, request=None) -> AuditEvent:
    """Write one AuditEvent. Never put demographics or other PHI in `reason` or `detail`."""
    if partner is not None and not client_id:
        client_id = partner.client_id
    return AuditEvent.objects.create(
        action=action, outcome=outcome, partner=partner, client_id=client_id[:200], reason=reason,
        entity=entity[:300], detail=detail or {}, source_ip=client_ip(request),
    )
