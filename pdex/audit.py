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


def storable(value: Any) -> Any:
    """`value` with every string fit for PostgreSQL text and jsonb: U+0000 and lone surrogates, which a hostile
    request may carry into an entity or a detail, become U+FFFD (the audit of a refusal must never fail)."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def record(action: str, outcome: str, *, partner: Partner | None = None, client_id: str = "", reason: str = "",
           entity: str = "", detail: dict[str, Any] | None = None, request=None) -> AuditEvent:
    """Write one AuditEvent. Never put demographics or other PHI in `reason` or `detail`."""
    if partner is not None and not client_id:
        client_id = partner.client_id
    return AuditEvent.objects.create(
        action=action, outcome=outcome, partner=partner, client_id=storable(client_id[:200]),
        reason=storable(reason), entity=storable(entity[:300]), detail=storable(detail or {}),
        source_ip=client_ip(request),
    )
