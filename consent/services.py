"""Recording, revoking and evaluating stored consents. The rule itself lives in consent.decision."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from consent.decision import (
    BLOCKED,
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
from consent.models import Consent, ConsentDocument, ConsentEvent, MemberBlock
from consent.signals import sharing_ended
from consent.staff import StaffConsent, build_resource
from pdex import audit
from pdex.models import Member, Partner


class ConsentRefused(Exception):
    """A consent staff tried to record that the decision would not comply with; `decision.reason` says why."""

    def __init__(self, decision: Decision):
        super().__init__(str(decision.reason))
        self.decision = decision


@dataclass(frozen=True)
class UploadedDocument:
    filename: str
    content_type: str
    data: bytes


def our_ids() -> frozenset[ActorId]:
    return organization_ids(npi=settings.PAYER_NPI, organization_id=settings.PAYER_ORGANIZATION_ID)


def partner_ids(partner: Partner) -> frozenset[ActorId]:
    return organization_ids(npi=partner.npi)


def decide_for_partner(facts: ConsentFacts | None, partner: Partner, now: datetime | None = None, *,
                       blocked: bool = False) -> Decision:
    """decide() with our identity, the partner's and our segmentation capability filled in."""
    return decide(facts, requester=partner_ids(partner), us=our_ids(),
                  can_segment=settings.CONSENT_CAN_SEGMENT_SENSITIVE, now=now or timezone.now(), blocked=blocked)


# --- member-level blocks ---------------------------------------------------------------------------

def active_blocks(partner: Partner) -> QuerySet[MemberBlock]:
    """The blocks in force against this partner: those for every payer and those for it."""
    return MemberBlock.objects.filter(lifted_at__isnull=True).filter(Q(partner__isnull=True) | Q(partner=partner))


def blocked_members(partner: Partner, member_ids: Iterable[int]) -> set[int]:
    return set(active_blocks(partner).filter(member_id__any=list(member_ids)).values_list("member_id", flat=True))


def block_member(member: Member, partner: Partner | None, reason: str, *, actor: str, request=None) -> MemberBlock:
    """The member asked us not to share with `partner` (None: any payer): in force at once, audited; what was
    already written for the partners it covers is withdrawn (exports listen to `sharing_ended`)."""
    with transaction.atomic():
        block = MemberBlock.objects.create(member=member, partner=partner, reason=reason, created_by=actor)
        audit.record("member-block", audit.SUCCESS, partner=partner, request=request, entity=f"MemberBlock/{block.pk}",
                     reason=f"blocked by {actor}", detail={"member": member.pk, "scope": str(partner or "every payer"),
                                                           "why": reason[:500]})
        transaction.on_commit(lambda: sharing_ended.send(
            MemberBlock, member_ids=[member.pk], partner_id=partner.pk if partner else None))
    return block


def lift_block(block: MemberBlock, reason: str, *, actor: str, request=None) -> bool:
    """End a block (kept, with who lifted it and why); False when it was already lifted."""
    lifted = MemberBlock.objects.filter(pk=block.pk, lifted_at__isnull=True).update(
        lifted_at=timezone.now(), lifted_by=actor, lifted_reason=reason)
    if lifted:
        audit.record("member-unblock", audit.SUCCESS, partner=block.partner, request=request,
                     entity=f"MemberBlock/{block.pk}", reason=f"lifted by {actor}",
                     detail={"member": block.member_id, "why": reason[:500]})
    return bool(lifted)


# --- a consent's history ---------------------------------------------------------------------------

def record_event(consent: Consent, action: str, actor: str, detail: str = "") -> ConsentEvent:
    return ConsentEvent.objects.create(consent=consent, action=action, actor=actor[:150], detail=detail)


def decision_text(decision: Decision) -> str:
    return f"{decision.kind} ({decision.reason})"


def facts_of(consent: Consent) -> ConsentFacts:
    """Stored columns for what admins may change (status, policy, period); actors from the resource."""
    return stored_facts(consent.policy, consent.period_start, consent.period_end, consent.status, consent.resource)


# The columns stored_facts reads, for queries that skip building Consent instances (decisions_for_members).
FACT_COLUMNS = ("policy", "period_start", "period_end", "status", "resource")


def stored_facts(policy: str, period_start: date | None, period_end: date | None, status: str,
                 resource: Mapping[str, Any] | None) -> ConsentFacts:
    submitted = facts_from_resource(resource)
    return ConsentFacts(
        policy=policy, period_start=period_start, period_end=period_end, status=status,
        sources=submitted.sources if submitted else frozenset(),
        recipients=submitted.recipients if submitted else frozenset(),
        representative=submitted.representative if submitted else None,
    )


def record_consent(member: Member, partner: Partner, consent_resource: Mapping[str, Any], via: str, *,
                   recorded_by: str = "", document=None) -> Consent:
    """Store (or replace) the member's consent for this partner, with its history (received, decided).

    A revocation stays in force against a partner's resubmission; a consent staff record (`recorded_by`, from
    the member's own signed form) replaces it.
    """
    facts = facts_from_resource(consent_resource)
    policy, uri = policy_of(consent_resource)
    representative = facts.representative if facts else None
    fields = {
        "policy": policy, "policy_uri": uri,
        "period_start": facts.period_start if facts else None, "period_end": facts.period_end if facts else None,
        "resource": dict(consent_resource), "submitted_via": via,
        "representative": (representative.name or representative.reference) if representative else "",
        "representative_role": representative.role_text[:64] if representative else "",
    }
    if recorded_by:
        fields.update(recorded_by=recorded_by, document=document)
    with transaction.atomic():
        existing = Consent.objects.select_for_update().filter(member=member, partner=partner).first()
        if existing is None:
            consent = Consent.objects.create(member=member, partner=partner, status=status_of(consent_resource),
                                             **fields)
        else:
            if existing.status != Consent.Status.REVOKED or recorded_by:
                fields["status"] = status_of(consent_resource)
            if recorded_by and existing.status == Consent.Status.REVOKED:
                fields.update(revoked_at=None, revoked_reason="", revoked_by="")
            for name, value in fields.items():
                setattr(existing, name, value)
            existing.save()
            consent = existing
        if recorded_by:
            record_event(consent, ConsentEvent.Action.RECORDED, recorded_by,
                         f"recorded by staff; document: {document or consent_resource.get('sourceReference', {})}")
        else:
            record_event(consent, ConsentEvent.Action.RECEIVED, str(partner), f"received via {via}")
        record_event(consent, ConsentEvent.Action.DECIDED, "service", decision_text(
            decide_for_partner(facts_of(consent), partner, blocked=bool(blocked_members(partner, [member.pk])))))
    return consent


def record_staff_consent(member: Member, partner: Partner, staff: StaffConsent, *, actor: str,
                         document: UploadedDocument | None = None, request=None) -> Consent:
    """A consent received out of band, judged like one that comes with a match: ConsentRefused (with the
    decision's reason) when it could not be complied with today. The document it came on is kept."""
    attachment = None
    if document is not None:
        attachment = {"contentType": document.content_type, "title": document.filename, "size": len(document.data),
                      "hash": base64.b64encode(hashlib.sha1(document.data).digest()).decode()}  # noqa: S324 (FHIR's hash)
    resource = build_resource(replace(staff, attachment=attachment), us=sorted(our_ids())[0])
    blocked = bool(blocked_members(partner, [member.pk]))
    decision = decide_for_partner(facts_from_resource(resource), partner, blocked=blocked)
    if not decision.allowed:
        raise ConsentRefused(decision)
    with transaction.atomic():
        stored = None
        if document is not None:
            stored = ConsentDocument.objects.create(
                filename=document.filename[:255], content_type=document.content_type[:100], data=document.data,
                size=len(document.data), sha1=hashlib.sha1(document.data).hexdigest(),  # noqa: S324
                uploaded_by=actor[:150])
        consent = record_consent(member, partner, resource, "staff", recorded_by=actor, document=stored)
        audit.record("consent-record", audit.SUCCESS, partner=partner, request=request, entity=f"Consent/{consent.pk}",
                     reason=f"recorded by {actor}", detail={"member": member.pk, "policy": staff.policy,
                                                            "representative": bool(staff.representative_name)})
    return consent


@dataclass(frozen=True)
class ReceivedConsent:
    """A consent that came with a matched member (bulk match), read and decided once by the match itself."""

    member_id: int
    resource: Mapping[str, Any]
    facts: ConsentFacts | None
    decision: Decision


def record_consents(partner: Partner, consents: Iterable[ReceivedConsent], via: str) -> int:
    """record_consent for many members in one statement (bulk match); revoked rows stay revoked.

    The "decided" history line is the decision the match made (as of the job's transaction time), not a second
    one: it is the decision that let the member into the MatchedMembers Group."""
    rows: dict[int, tuple] = {}
    decided: dict[int, str] = {}
    for consent in consents:
        member_id, resource, facts = consent.member_id, consent.resource, consent.facts
        decided[member_id] = decision_text(consent.decision)
        policy, uri = policy_of(resource)
        representative = facts.representative if facts else None
        rows[member_id] = (member_id, policy, uri, facts.period_start if facts else None,
                           facts.period_end if facts else None, status_of(resource),
                           json.dumps(resource, separators=(",", ":")),
                           (representative.name or representative.reference)[:200] if representative else "",
                           representative.role_text[:64] if representative else "")
    if not rows:
        return 0
    members, policies, uris, starts, ends, statuses, resources, representatives, roles = (
        list(c) for c in zip(*rows.values(), strict=True))
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:  # server-side binding: arrays, no client quoting
        cursor.execute(
            """
            INSERT INTO consent_consent (member_id, partner_id, policy, policy_uri, period_start, period_end, status,
                                         resource, submitted_via, submitted_at, updated_at, revoked_reason,
                                         revoked_by, recorded_by, representative, representative_role)
            SELECT v.member_id, %s, v.policy, v.uri, v.period_start, v.period_end, v.status, v.resource::jsonb, %s,
                   now(), now(), '', '', '', v.representative, v.role
              FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::date[], %b::date[], %b::text[], %b::text[],
                          %b::text[], %b::text[])
                   AS v(member_id, policy, uri, period_start, period_end, status, resource, representative, role)
            ON CONFLICT (member_id, partner_id) DO UPDATE
               SET policy = EXCLUDED.policy, policy_uri = EXCLUDED.policy_uri, period_start = EXCLUDED.period_start,
                   period_end = EXCLUDED.period_end, status = EXCLUDED.status, resource = EXCLUDED.resource,
                   submitted_via = EXCLUDED.submitted_via, representative = EXCLUDED.representative,
                   representative_role = EXCLUDED.representative_role, updated_at = now()
             WHERE consent_consent.status <> 'revoked'
            RETURNING id, member_id
            """,
            (partner.pk, via, members, policies, uris, starts, ends, statuses, resources, representatives, roles))
        stored = cursor.fetchall()
        # Each consent's history, received then decided, in one statement (the ORM's bulk_create of 2,000
        # events cost more than the upsert of 1,000 consents).
        consent_ids = [consent_id for consent_id, _ in stored]
        cursor.execute(
            """
            INSERT INTO consent_consentevent (consent_id, at, action, actor, detail)
            SELECT e.consent_id, now(), e.action, e.actor, e.detail
              FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY
                   AS e(consent_id, action, actor, detail, n)
             ORDER BY e.n
            """,
            ([i for i in consent_ids for _ in (0, 1)],
             [ConsentEvent.Action.RECEIVED, ConsentEvent.Action.DECIDED] * len(stored),
             [str(partner)[:150], "service"] * len(stored),
             [d for _, member_id in stored for d in (f"received via {via}", decided.get(member_id, ""))]))
    return len(stored)


def revoke(consent: Consent, reason: str, *, actor: str = "admin", request=None) -> Consent:
    """Revoke: in force at once for every match, retrieval and chunk that starts after it; what was already
    written for the partner is withdrawn (exports listen to `sharing_ended`, docs/consent.md)."""
    with transaction.atomic():
        consent.status = Consent.Status.REVOKED
        consent.revoked_at = timezone.now()
        consent.revoked_reason = reason
        consent.revoked_by = actor[:150]
        consent.save(update_fields=["status", "revoked_at", "revoked_reason", "revoked_by", "updated_at"])
        record_event(consent, ConsentEvent.Action.REVOKED, actor, reason)
        audit.record("consent-revoke", audit.SUCCESS, partner=consent.partner, reason=f"revoked by {actor}",
                     entity=f"Consent/{consent.pk}", detail={"member": consent.member_id, "why": reason[:500]},
                     request=request)
        transaction.on_commit(lambda: sharing_ended.send(
            Consent, member_ids=[consent.member_id], partner_id=consent.partner_id))
    return consent


def _with_block(consents: QuerySet[Consent], partner: Partner) -> QuerySet[Consent]:
    return consents.annotate(blocked=Exists(active_blocks(partner).filter(member_id=OuterRef("member_id"))))


def decision_for(member: Member, partner: Partner, now: datetime | None = None) -> Decision:
    """The decision for one member now, an active block included (one query)."""
    consent = _with_block(Consent.objects.filter(member=member, partner=partner), partner).first()
    if consent is None:
        return BLOCKED if blocked_members(partner, [member.pk]) else NO_CONSENT
    return decide_for_partner(facts_of(consent), partner, now, blocked=consent.blocked)


# The version of a row as PostgreSQL wrote it: its xmin, the transaction that wrote this version of the row.
# Any UPDATE (the ORM's, a raw upsert, an admin's `.update()`) writes a new version with a new xmin, whoever's
# clock stamped `updated_at`; so "the row is the one the plan judged" needs no clock at all.
CONSENT_VERSION = RawSQL('"consent_consent"."xmin"::text::bigint', ())
PARTNER_VERSION = RawSQL('"pdex_partner"."xmin"::text::bigint', ())


def partner_version(partner: Partner) -> int | None:
    """The version of the partner's row now (its xmin): a plan keeps it, and a gate that finds another judges
    everyone again (the decision reads the partner's identifiers)."""
    return Partner.objects.filter(pk=partner.pk).annotate(version=PARTNER_VERSION).values_list(
        "version", flat=True).first()


def unsettled_members(partner: Partner, judged: Mapping[int, int], *, partner_judged: int | None,
                      now: datetime | None = None) -> set[int]:
    """Of members the plan let in, judged on the consent versions `judged` (member → version, as
    decisions_for_members reported them) and the partner row's version `partner_judged`, those whose decision
    now may differ. A decision is a function of the consent row, the partner row, the blocks and today's date,
    so it can only differ for a member whose consent row is no longer the version judged (or is gone), whose
    period no longer covers today, or who is blocked — or for every member when the partner row is no longer
    the one judged. Two or three indexed queries, whatever the count: a chunk, the download gate and the
    withdrawal sweep each ask about thousands of members, and only these need a decision."""
    member_ids = set(judged)
    if not member_ids:
        return set()
    if partner_judged is None or partner_version(partner) != partner_judged:
        return member_ids
    today = (now or timezone.now()).date()
    current = Consent.objects.filter(
        partner=partner, member_id__any=list(member_ids), status=Consent.Status.ACTIVE,
        period_start__lte=today, period_end__gte=today).annotate(version=CONSENT_VERSION)
    settled = {member_id for member_id, version in current.values_list("member_id", "version")
               if judged[member_id] == version}
    return (member_ids - settled) | blocked_members(partner, member_ids)


DECISION_ROWS = 1000


def decisions_for_members(partner: Partner, member_ids: Iterable[int], now: datetime | None = None, *,
                          versions: dict[int, int] | None = None) -> dict[int, Decision]:
    """One query for many members (exports re-check at execution time); no consent → cannot comply.

    `versions`, when given, is filled with the version of each consent row judged (CONSENT_VERSION), read in the
    same statement as the row: what unsettled_members later compares against."""
    member_ids = list(member_ids)
    now = now or timezone.now()
    decisions = dict.fromkeys(member_ids, NO_CONSENT)
    # Rows, not Consent instances: building 10,000 model instances was most of a gate's time; streamed, so
    # 10,000 consent resources are never in memory at once (+70 MB when they were).
    rows = _with_block(Consent.objects.filter(partner=partner, member_id__any=member_ids), partner).annotate(
        version=CONSENT_VERSION).values_list("member_id", "version", "blocked", *FACT_COLUMNS)
    for member_id, version, blocked, *facts in rows.iterator(chunk_size=DECISION_ROWS):
        decisions[member_id] = decide_for_partner(stored_facts(*facts), partner, now, blocked=blocked)
        if versions is not None:
            versions[member_id] = version
    return decisions
