"""The HRex Consent we collect for a previous payer (spec §3.2–3.4), built and read back: pure functions.

The member (or their authorized representative) permits the previous payer (the source, role `performer`) to
disclose their data to us (the recipient, role `IRCP`), under `#regular` (non-sensitive data only) or
`#sensitive` (everything), for a period that follows the spec's scenarios (§3.3): enrollment — through 90
days after our coverage starts; concurrent coverage — through the end of the other plan's coverage. The same
shape `consent.decision` reads on the data holder's side, so the decision the previous payer will make can be
checked here before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from consent.decision import (
    NPI_SYSTEM,
    RECIPIENT_ROLE,
    REGULAR_POLICY_URI,
    SENSITIVE_POLICY_URI,
    SOURCE_ROLE,
)

HREX_CONSENT = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-consent"
CONSENT_SCOPE = ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
DISCLOSURE = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IDSCL")
DISCLOSE = ("http://terminology.hl7.org/CodeSystem/consentaction", "disclose")
ROLE_CODES = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
REPRESENTATIVE_ROLES = {"HPOWATT": "healthcare power of attorney", "DPOWATT": "durable power of attorney",
                        "GUARD": "guardian"}
POLICY_URIS = {"regular": REGULAR_POLICY_URI, "sensitive": SENSITIVE_POLICY_URI}
RUNOFF_DAYS = 90  # enrollment scenario: through 90 days after the new coverage starts (spec §3.3)
REPRESENTATIVE_ID = "representative"


class ConsentInvalid(ValueError):
    """A consent we will not record: the message names the problem (safe to show: no PHI)."""


@dataclass(frozen=True)
class PayerRef:
    """A payer as a Consent actor names it: by NPI identifier, with its name for display."""

    npi: str
    name: str

    def reference(self) -> dict[str, Any]:
        return {"identifier": {"system": NPI_SYSTEM, "value": self.npi}, "display": self.name}


@dataclass(frozen=True)
class Representative:
    """Someone consenting for the member (spec §3.4): a contained RelatedPerson with a SecurityRoleType role."""

    name: str
    role: str  # HPOWATT, DPOWATT or GUARD
    relationship: str = ""  # v3-RoleCode of how they are related, e.g. DAU, SPS

    def __post_init__(self) -> None:
        if self.role not in REPRESENTATIVE_ROLES:
            raise ConsentInvalid(f"the representative's role must be one of {', '.join(REPRESENTATIVE_ROLES)}")
        if not self.name.strip():
            raise ConsentInvalid("the representative needs a name")


@dataclass(frozen=True)
class ConsentTerms:
    """What the member agreed to: the policy and the period."""

    policy: str  # "regular" or "sensitive"
    period_start: date
    period_end: date

    def __post_init__(self) -> None:
        if self.policy not in POLICY_URIS:
            raise ConsentInvalid("the policy must be #regular or #sensitive")
        if self.period_end < self.period_start:
            raise ConsentInvalid("the consent period ends before it starts")


def scenario_period(*, scenario: str, collected_on: date, coverage_start: date,
                    old_coverage_end: date | None = None) -> tuple[date, date]:
    """The consent period the spec's scenarios suggest (§3.3): from the day it is collected, through 90 days
    after our coverage starts (enrollment), or through the end of the other plan's coverage (concurrent)."""
    if scenario == "enrollment":
        return collected_on, coverage_start + timedelta(days=RUNOFF_DAYS)
    if scenario == "concurrent":
        if old_coverage_end is None:
            raise ConsentInvalid("a concurrent-coverage consent needs the end of the other plan's coverage")
        return collected_on, old_coverage_end
    raise ConsentInvalid("the scenario must be enrollment or concurrent")


def _coding(system: str, code: str, display: str = "") -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def consent_resource(*, consent_id: str, patient_id: str, terms: ConsentTerms, source: PayerRef,
                     recipient: PayerRef, collected_on: date, record_system: str,
                     representative: Representative | None = None) -> dict[str, Any]:
    """An HRex Consent: `source` (the previous payer) may disclose the member's data to `recipient` (us)."""
    patient = {"reference": f"Patient/{patient_id}"}
    actors = [
        {"role": _coding(*SOURCE_ROLE), "reference": source.reference()},
        {"role": _coding(*RECIPIENT_ROLE), "reference": recipient.reference()},
    ]
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id,
        "meta": {"profile": [HREX_CONSENT]},
        "status": "active",
        "scope": _coding(*CONSENT_SCOPE),
        "category": [_coding(*DISCLOSURE)],
        "patient": patient,
        "dateTime": collected_on.isoformat(),
        "performer": [patient],
        # The signed form is kept by us; the reference names our record of it (not machine-evaluated, §3.2).
        "sourceReference": {"type": "DocumentReference",
                            "identifier": {"system": record_system, "value": consent_id},
                            "display": f"consent collected by {recipient.name} on {collected_on.isoformat()}"},
        "policy": [{"uri": POLICY_URIS[terms.policy]}],
        "provision": {
            "type": "permit",
            "period": {"start": terms.period_start.isoformat(), "end": terms.period_end.isoformat()},
            "actor": actors,
            "action": [_coding(*DISCLOSE)],
        },
    }
    if representative is not None:
        related: dict[str, Any] = {"resourceType": "RelatedPerson", "id": REPRESENTATIVE_ID, "patient": patient,
                                   "name": [{"text": representative.name.strip()}]}
        if representative.relationship:
            related["relationship"] = [_coding(ROLE_CODES, representative.relationship)]
        resource["contained"] = [related]
        resource["performer"] = [{"reference": f"#{REPRESENTATIVE_ID}"}]
        actors.append({"role": _coding(ROLE_CODES, representative.role, REPRESENTATIVE_ROLES[representative.role]),
                       "reference": {"reference": f"#{REPRESENTATIVE_ID}"}})
    return resource


# --- reading a Consent our enrollment systems send ------------------------------------------------

@dataclass(frozen=True)
class OldCard:
    """The member's card from the previous payer: what its member match looks them up by."""

    member_id: str = ""
    subscriber_id: str = ""
    relationship: str = "self"
    coverage_end: date | None = None

    def __post_init__(self) -> None:
        if not (self.member_id or self.subscriber_id):
            raise ConsentInvalid("the old card needs a member id or a subscriber id")


@dataclass(frozen=True)
class SubmittedConsent:
    """What a Consent sent to `POST /fhir/Consent` says, before it is recorded."""

    patient_id: str
    source_npis: frozenset[str]
    recipient_npis: frozenset[str]
    active: bool
    terms: ConsentTerms | None  # None for a revocation (status inactive)
    old_card: OldCard | None
    coverage_start: date | None
    representative: Representative | None


def _codes(concept: Any) -> set[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return {(c.get("system", ""), c.get("code", "")) for c in codings or [] if isinstance(c, Mapping)}


def _npi(reference: Any, contained: Mapping[str, Mapping[str, Any]]) -> str:
    if not isinstance(reference, Mapping):
        return ""
    identifier = reference.get("identifier")
    if isinstance(identifier, Mapping) and identifier.get("system") == NPI_SYSTEM and identifier.get("value"):
        return str(identifier["value"])
    literal = reference.get("reference")
    if isinstance(literal, str) and literal.startswith("#"):
        target = contained.get(literal[1:]) or {}
        for item in target.get("identifier") or []:
            if isinstance(item, Mapping) and item.get("system") == NPI_SYSTEM and item.get("value"):
                return str(item["value"])
    return ""


def _date(value: Any, what: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConsentInvalid(f"{what} is not a date") from None


def _patient_id(reference: Any) -> str:
    literal = reference.get("reference") if isinstance(reference, Mapping) else None
    if not isinstance(literal, str) or not literal.startswith("Patient/") or literal.count("/") != 1:
        raise ConsentInvalid("Consent.patient must reference Patient/{id} of our member")
    return literal.split("/", 1)[1]


def read_submitted(resource: Any, *, our_npi: str) -> SubmittedConsent:
    """The facts of an HRex Consent for one of our members; ConsentInvalid naming what is wrong.

    The old card travels as a contained Coverage whose payor is the previous payer (its member id typed MB,
    its subscriber id, its period's end); our own coverage as a contained Coverage whose payor is us gives the
    date our coverage starts. A contained RelatedPerson that is the performer, with an actor of role HPOWATT,
    DPOWATT or GUARD, is an authorized representative.
    """
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Consent":
        raise ConsentInvalid("the body must be a FHIR Consent")
    contained = {c.get("id"): c for c in resource.get("contained") or [] if isinstance(c, Mapping) and c.get("id")}
    provision = resource.get("provision") if isinstance(resource.get("provision"), Mapping) else {}
    if provision.get("type", "permit") != "permit":
        raise ConsentInvalid("provision.type must be permit")
    sources, recipients, representative_role = set(), set(), ""
    for actor in provision.get("actor") or []:
        if not isinstance(actor, Mapping):
            continue
        codes, npi = _codes(actor.get("role")), _npi(actor.get("reference"), contained)
        if SOURCE_ROLE in codes and npi:
            sources.add(npi)
        if RECIPIENT_ROLE in codes and npi:
            recipients.add(npi)
        for system, code in codes:
            if system == ROLE_CODES and code in REPRESENTATIVE_ROLES:
                representative_role = code
    if our_npi not in recipients:
        raise ConsentInvalid("a provision.actor with role IRCP must name us (our NPI) as the recipient")
    if len(sources) != 1:
        raise ConsentInvalid("exactly one provision.actor with role performer must name the previous payer by NPI")
    status = resource.get("status")
    if status not in ("active", "inactive"):
        raise ConsentInvalid("status must be active (a consent) or inactive (a revocation)")
    patient_id = _patient_id(resource.get("patient"))
    if status == "inactive":
        return SubmittedConsent(patient_id=patient_id, source_npis=frozenset(sources),
                                recipient_npis=frozenset(recipients), active=False, terms=None, old_card=None,
                                coverage_start=None, representative=None)
    policies = {p.get("uri") for p in resource.get("policy") or [] if isinstance(p, Mapping)}
    policy = next((name for name, uri in POLICY_URIS.items() if uri in policies), "")
    if not policy:
        raise ConsentInvalid("policy must name #regular or #sensitive (the HRex consent policy URIs)")
    period = provision.get("period") if isinstance(provision.get("period"), Mapping) else {}
    start, end = _date(period.get("start"), "provision.period.start"), _date(period.get("end"), "provision.period.end")
    if start is None or end is None:
        raise ConsentInvalid("provision.period needs a start and an end (HRex)")
    terms = ConsentTerms(policy=policy, period_start=start, period_end=end)
    [source] = sources
    old_card, coverage_start = None, None
    for item in contained.values():
        if item.get("resourceType") != "Coverage":
            continue
        payors = {_npi(payor, contained) for payor in item.get("payor") or []}
        coverage_period = item.get("period") if isinstance(item.get("period"), Mapping) else {}
        if source in payors:
            member_id = next((str(i.get("value")) for i in item.get("identifier") or []
                              if isinstance(i, Mapping) and i.get("value")
                              and ("http://terminology.hl7.org/CodeSystem/v2-0203", "MB") in _codes(i.get("type"))),
                             "")
            relationship = next((code for _, code in _codes(item.get("relationship"))), "self")
            old_card = OldCard(member_id=member_id, subscriber_id=str(item.get("subscriberId") or ""),
                               relationship=relationship,
                               coverage_end=_date(coverage_period.get("end"), "the old coverage's period.end"))
        elif our_npi in payors:
            coverage_start = _date(coverage_period.get("start"), "our coverage's period.start")
    if old_card is None:
        raise ConsentInvalid("a contained Coverage whose payor is the previous payer (the member's old card) is "
                             "needed: its member id or subscriber id is what the previous payer matches on")
    representative = None
    performers = [p.get("reference") for p in resource.get("performer") or [] if isinstance(p, Mapping)]
    for literal in performers:
        target = contained.get(literal[1:]) if isinstance(literal, str) and literal.startswith("#") else None
        if target and target.get("resourceType") == "RelatedPerson":
            names = [n for n in target.get("name") or [] if isinstance(n, Mapping)]
            name = names[0].get("text") or " ".join([*(names[0].get("given") or []), names[0].get("family", "")]) \
                if names else ""
            relationship = next((code for system, code in
                                 (c for r in target.get("relationship") or [] for c in _codes(r))
                                 if system == ROLE_CODES), "")
            representative = Representative(name=str(name), role=representative_role or "HPOWATT",
                                            relationship=relationship)
    return SubmittedConsent(patient_id=patient_id, source_npis=frozenset(sources),
                            recipient_npis=frozenset(recipients), active=True, terms=terms, old_card=old_card,
                            coverage_start=coverage_start, representative=representative)
