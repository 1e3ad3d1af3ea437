"""Member match, single and bulk: candidate lookup, the matcher, the consent decision, throttling, audit.

The rules are pure (matching.matcher, consent.decision); this module does the I/O around them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from consent import services as consent_services
from consent.agreements import require_agreement_for_match
from consent.decision import (
    NPI_SYSTEM,
    ConsentFacts,
    Decision,
    DecisionKind,
    Reason,
    actor_ids,
    facts_from_resource,
)
from consent.models import Consent
from matching import budget, store
from matching.matcher import (
    Candidate,
    MatchResult,
    Outcome,
    Submitted,
    candidate_from_row,
    match,
    submitted_from,
)
from matching.models import MatchEntry
from matching.parameters import MatchRequest, parse_member_match, request_from_bundle
from pdex import audit
from pdex.fhir import TooManyRequests, Unprocessable
from pdex.identity import our_identity
from pdex.models import Member, Partner

log = logging.getLogger(__name__)

# One text for no match, several matches and consent refusal: a 422 must not reveal whether a person exists.
NOT_MATCHED_TEXT = ("No unique member match could be established for the supplied member and coverage, "
                    "or the consent cannot be complied with.")
UMB_TYPE = {"coding": [{"system": "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "code": "UMB"}]}
MEMBER_MATCH_OUT = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-parameters-member-match-out"


# --- candidates ----------------------------------------------------------------------------------

def find_candidates(submitted: list[Submitted]) -> list[list[Candidate]]:
    """Candidates for many members in at most two indexed queries: identifiers, then birth dates."""
    member_numbers = set().union(*(s.member_numbers for s in submitted))
    subscriber_ids = set().union(*(s.subscriber_ids for s in submitted))
    umbs = set().union(*(s.umbs for s in submitted))
    # A member number may be shared (a family card): each member holding it is a hit for demographics to judge.
    by_member_number: dict[str, list[Candidate]] = defaultdict(list)
    by_umb: dict[str, Candidate] = {}
    by_subscriber: dict[str, list[Candidate]] = defaultdict(list)
    for row in store.candidate_rows(member_numbers=member_numbers, subscriber_ids=subscriber_ids, umbs=umbs):
        candidate = candidate_from_row(row)
        if candidate.member_number:
            by_member_number[candidate.member_number].append(candidate)
        by_umb[candidate.umb] = candidate
        if candidate.subscriber_id:
            by_subscriber[candidate.subscriber_id].append(candidate)
    found: list[list[Candidate]] = []
    for s in submitted:
        hits = [c for n in s.member_numbers for c in by_member_number.get(n, [])]
        hits += [by_umb[u] for u in s.umbs if u in by_umb]
        for subscriber_id in s.subscriber_ids:
            hits += by_subscriber.get(subscriber_id, [])
        found.append(hits)
    # Demographics only for members whose identifiers found nobody: by birth date (index birth_date, family).
    need = {s.birth_date for s, hits in zip(submitted, found, strict=True) if not hits and s.birth_date}
    if need:
        by_birth_date: dict[Any, list[Candidate]] = defaultdict(list)
        for row in store.candidate_rows(birth_dates=need):
            by_birth_date[row["birth_date"]].append(candidate_from_row(row))
        for index, s in enumerate(submitted):
            if not found[index] and s.birth_date:
                found[index] = by_birth_date.get(s.birth_date, [])
    return found


# --- one member: match, then consent ------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    """What became of one member: match / nomatch / consentconstraint, and why (for the log only)."""

    outcome: str
    member_id: int | None
    result: MatchResult
    decision: Decision | None = None
    consent: Mapping[str, Any] | None = None
    facts: ConsentFacts | None = None  # the consent as read for the decision (stored as read, not read again)

    @property
    def reason(self) -> str:
        parts = [self.result.outcome.value, f"score {self.result.score}", *self.result.reasons]
        if self.decision is not None:
            parts.append(f"consent: {self.decision.kind} ({self.decision.reason})")
        return "; ".join(parts)


def evaluate(request: MatchRequest, result: MatchResult, partner: Partner, *, revoked: Mapping[int, Reason],
             now: datetime) -> Evaluation:
    """The consent decision for a matched member (spec §3.5); a missing Consent cannot be complied with, and
    our own restrictions (`revoked`: a member block, a revocation) win over the consent that came."""
    if result.outcome is not Outcome.MATCH:
        return Evaluation(MatchEntry.Outcome.NO_MATCH, None, result)
    facts = None
    if result.member_id in revoked:
        decision = Decision(DecisionKind.CANNOT_COMPLY, revoked[result.member_id])
    else:
        facts = facts_from_resource(request.consent)
        decision = consent_services.decide_for_partner(facts, partner, now)
    if decision.allowed and link_names_someone_else(request.coverage_to_link, partner):
        decision = Decision(DecisionKind.CANNOT_COMPLY, Reason.NOT_RECIPIENT)
    if not decision.allowed:
        return Evaluation(MatchEntry.Outcome.CONSENT_CONSTRAINED, result.member_id, result, decision)
    return Evaluation(MatchEntry.Outcome.MATCHED, result.member_id, result, decision, request.consent, facts)


def link_names_someone_else(coverage_to_link: Mapping[str, Any] | None, partner: Partner) -> bool:
    """CoverageToLink (the member's coverage at the requester) whose payor is identified, and is not the
    caller: the consent's recipient cross-check fails (spec §3.3 item 4). An unidentified payor proves nothing."""
    if not coverage_to_link:
        return False
    contained = {c.get("id"): c for c in coverage_to_link.get("contained") or [] if isinstance(c, dict)}
    named = set().union(*(actor_ids(p, contained) for p in coverage_to_link.get("payor") or []))
    named = {(system, value) for system, value in named if system == NPI_SYSTEM}
    return bool(named) and not named & consent_services.partner_ids(partner)


def revoked_members(partner: Partner, member_ids: Iterable[int | None]) -> dict[int, Reason]:
    """Members we must refuse whatever consent comes: a member-level block (for every payer or this one), or a
    consent for this partner an admin revoked (that outlives any resubmission). The block wins."""
    ids = [i for i in member_ids if i is not None]
    if not ids:
        return {}
    refused = dict.fromkeys(Consent.objects.filter(partner=partner, member_id__any=ids, status=Consent.Status.REVOKED)
                            .values_list("member_id", flat=True), Reason.REVOKED)
    refused.update(dict.fromkeys(consent_services.blocked_members(partner, ids), Reason.BLOCKED))
    return refused


# --- $member-match -------------------------------------------------------------------------------

def spend_budget(partner: Partner, members: int) -> budget.Reservation:
    """Reserve `members` failures of the partner's member-match budget, or 429 before anything is evaluated."""
    reservation = budget.reserve(partner, members)
    if not reservation.allowed:
        raise TooManyRequests("Too many unsuccessful member-match attempts; retry later.",
                              retry_after=reservation.retry_after, audit_reason="member-match budget spent",
                              audit_detail={"members": members})
    return reservation


def member_match(*, partner: Partner, body: Any, request=None, now: datetime | None = None) -> Member:
    """$member-match: the one member, with the consent stored; Unprocessable (one generic text) otherwise."""
    now = now or timezone.now()
    require_agreement_for_match(partner, entity="Patient/$member-match")
    started = time.time()
    spend_budget(partner, 1)
    try:
        match_request = parse_member_match(body)
        submitted = submitted_from(match_request, our_identity())
        result = match(submitted, find_candidates([submitted])[0])
        evaluation = evaluate(match_request, result, partner, revoked=revoked_members(partner, [result.member_id]),
                              now=now)
    except Exception:  # malformed input, or our own failure: not a guess
        budget.refund(partner, 1, reserved_at=started)
        raise
    entity = f"Member/{evaluation.member_id}" if evaluation.member_id else ""
    if evaluation.outcome != MatchEntry.Outcome.MATCHED:
        raise Unprocessable(NOT_MATCHED_TEXT, code="processing", audit_reason=_audit_outcome(evaluation),
                            audit_entity=entity, audit_detail={"reasons": evaluation.reason})
    budget.refund(partner, 1, reserved_at=started)
    member = Member.objects.get(pk=evaluation.member_id)
    consent_services.record_consent(member, partner, match_request.consent, "member-match")
    audit.record("member-match", audit.SUCCESS, partner=partner, entity=f"Patient/{member.fhir_id}", request=request,
                 reason="matched", detail={"reasons": evaluation.reason, "legacy_input": match_request.legacy})
    return member


def _audit_outcome(evaluation: Evaluation) -> str:
    if evaluation.outcome == MatchEntry.Outcome.CONSENT_CONSTRAINED:
        return "consent"
    return "several" if evaluation.result.outcome is Outcome.SEVERAL else "no match"


def member_match_response(member: Member) -> dict[str, Any]:
    """hrex-parameters-member-match-out: MemberIdentifier (UMB) and MemberId."""
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [MEMBER_MATCH_OUT]},
        "parameter": [
            {"name": "MemberIdentifier", "valueIdentifier": {
                "type": UMB_TYPE, "system": settings.MEMBER_UMB_SYSTEM, "value": member.umb,
                "assigner": {"display": settings.PAYER_NAME}}},
            {"name": "MemberId", "valueReference": {"reference": f"Patient/{member.fhir_id}"}},
        ],
    }


# --- many members at once (bulk member match batches, matching.jobs) ----------------------------

def evaluate_entries(partner: Partner, bundles: list[Mapping[str, Any]], *, now: datetime) -> list[Evaluation]:
    """Each member on its own: one that cannot even be read goes to NonMatchedMembers, never failing the rest."""
    ours = our_identity()
    requests: list[MatchRequest | None] = []
    submitted: list[Submitted] = []
    for bundle in bundles:
        try:
            match_request = request_from_bundle(bundle)
            requests.append(match_request)
            submitted.append(submitted_from(match_request, ours))
        except Exception:  # a malformed member must not fail the batch
            log.warning("a bulk-member-match entry is unreadable", exc_info=True)
            requests.append(None)
            submitted.append(Submitted("", "", None, "", frozenset(), frozenset(), frozenset(), frozenset(),
                                       False, ("unreadable",)))
    candidates = find_candidates(submitted)
    results = [_match_one(s, c) for s, c in zip(submitted, candidates, strict=True)]
    revoked = revoked_members(partner, [r.member_id for r in results])
    evaluations = []
    for match_request, result in zip(requests, results, strict=True):
        if match_request is None:
            evaluations.append(Evaluation(MatchEntry.Outcome.NO_MATCH, None, result))
            continue
        try:
            evaluations.append(evaluate(match_request, result, partner, revoked=revoked, now=now))
        except Exception:  # a consent we cannot read cannot be complied with
            log.warning("a bulk-member-match consent is unreadable", exc_info=True)
            evaluations.append(Evaluation(MatchEntry.Outcome.CONSENT_CONSTRAINED, result.member_id, result))
    return evaluations


def _match_one(submitted: Submitted, candidates: list[Candidate]) -> MatchResult:
    try:
        return match(submitted, candidates)
    except Exception:  # one member's odd data must not fail the batch
        log.warning("a bulk-member-match member could not be compared", exc_info=True)
        return MatchResult(Outcome.NONE, reasons=("error",))
