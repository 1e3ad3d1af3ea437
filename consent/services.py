"""Recording, revoking and evaluating stored consents. The rule itself lives in consent.decision."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from django.utils import timezone

from consent.decision import (
    NO_CONSENT,
    ActorId,
    ConsentFacts,
    Decision,
    decide,
    facts_from_resource,
    organization_ids,
    policy_of,
    status_of,
)
from consent.models import Consent
from pdex import audit
from pdex.models import Member, Partner


def our_ids() -> frozenset[ActorId]:
    return organization_ids(npi=settings.PAYER_NPI, organization_id=settings.PAYER_ORGANIZATION_ID)


def partner_ids(partner: Partner) -> frozenset[ActorId]:
    return organization_ids(npi=partner.npi)


def decide_for_partner(facts: ConsentFacts | None, partner: Partner, now: datetime | None = None) -> Decision:
    """decide() with our identity, the partner's and our segmentation capability filled in."""
    return decide(facts, requester=partner_ids(partner), us=our_ids(),
                  can_segment=settings.CONSENT_CAN_SEGMENT_SENSITIVE, now=now or timezone.now())


def facts_of(consent: Consent) -> ConsentFacts:
    """Stored columns for what admins may change (status, policy, period); actors from the resource."""
    submitted = facts_from_resource(consent.resource)
    return ConsentFacts(
        policy=consent.policy, period_start=consent.period_start, period_end=consent.period_end,
        status=consent.status,
        sources=submitted.sources if submitted else frozenset(),
        recipients=submitted.recipients if submitted else frozenset(),
    )


def record_consent(member: Member, partner: Partner, consent_resource: Mapping[str, Any], via: str) -> Consent:
    """Store (or replace) the member's consent for this partner. An admin revocation stays in force."""
    facts = facts_from_resource(consent_resource)
    policy, uri = policy_of(consent_resource)
    fields = {
        "policy": policy, "policy_uri": uri,
        "period_start": facts.period_start if facts else None, "period_end": facts.period_end if facts else None,
        "resource": dict(consent_resource), "submitted_via": via,
    }
    existing = Consent.objects.filter(member=member, partner=partner).first()
    if existing is None:
        return Consent.objects.create(member=member, partner=partner, status=status_of(consent_resource), **fields)
    if existing.status != Consent.Status.REVOKED:
        fields["status"] = status_of(consent_resource)
    for name, value in fields.items():
        setattr(existing, name, value)
    existing.save()
    return existing


def record_consents(partner: Partner, consents: Iterable[tuple[int, Mapping[str, Any] | None]], via: str) -> int:
    """record_consent for many members in one statement (bulk match); revoked rows stay revoked."""
    rows: dict[int, tuple] = {}
    for member_id, resource in consents:
        if resource is None:
            continue
        facts = facts_from_resource(resource)
        policy, uri = policy_of(resource)
        rows[member_id] = (member_id, policy, uri, facts.period_start if facts else None,
                           facts.period_end if facts else None, status_of(resource), json.dumps(resource))
    if not rows:
        return 0
    members, policies, uris, starts, ends, statuses, resources = (list(c) for c in zip(*rows.values(), strict=True))
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:  # server-side binding: arrays, no client quoting
        cursor.execute(
            """
            INSERT INTO consent_consent (member_id, partner_id, policy, policy_uri, period_start, period_end, status,
                                         resource, submitted_via, submitted_at, updated_at, revoked_reason)
            SELECT v.member_id, %s, v.policy, v.uri, v.period_start, v.period_end, v.status, v.resource::jsonb, %s,
                   now(), now(), ''
              FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::date[], %b::date[], %b::text[], %b::text[])
                   AS v(member_id, policy, uri, period_start, period_end, status, resource)
            ON CONFLICT (member_id, partner_id) DO UPDATE
               SET policy = EXCLUDED.policy, policy_uri = EXCLUDED.policy_uri, period_start = EXCLUDED.period_start,
                   period_end = EXCLUDED.period_end, status = EXCLUDED.status, resource = EXCLUDED.resource,
                   submitted_via = EXCLUDED.submitted_via, updated_at = now()
             WHERE consent_consent.status <> 'revoked'
            """,
            (partner.pk, via, members, policies, uris, starts, ends, statuses, resources))
        return cursor.rowcount


def revoke(consent: Consent, reason: str, *, actor: str = "admin") -> Consent:
    """Revoke: effective on the next match, token or export (each re-runs the decision)."""
    consent.status = Consent.Status.REVOKED
    consent.revoked_at = timezone.now()
    consent.revoked_reason = reason
    consent.save(update_fields=["status", "revoked_at", "revoked_reason", "updated_at"])
    audit.record("consent-revoke", audit.SUCCESS, partner=consent.partner, reason=f"revoked by {actor}",
                 entity=f"Consent/{consent.pk}", detail={"member": consent.member_id})
    return consent


def decision_for(member: Member, partner: Partner, now: datetime | None = None) -> Decision:
    consent = Consent.objects.filter(member=member, partner=partner).first()
    return decide_for_partner(facts_of(consent), partner, now) if consent else NO_CONSENT


def decisions_for_members(partner: Partner, member_ids: Iterable[int],
                          now: datetime | None = None) -> dict[int, Decision]:
    """One query for many members (exports re-check at execution time); no consent → cannot comply."""
    member_ids = list(member_ids)
    now = now or timezone.now()
    decisions = dict.fromkeys(member_ids, NO_CONSENT)
    for consent in Consent.objects.filter(partner=partner, member_id__in=member_ids):
        decisions[consent.member_id] = decide_for_partner(facts_of(consent), partner, now)
    return decisions
