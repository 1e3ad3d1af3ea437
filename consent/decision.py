"""The one consent decision (spec §3.3–3.5), shared by member match, token issue, exports and admin.

Pure: consent facts, who asks, who we are, whether we can segment sensitive data and "now" go in; a
Decision comes out. Policy names are counter-intuitive (spec §3.1): `#regular` discloses non-sensitive
data only, `#sensitive` discloses everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pdex.extract import parse_fhir_date

REGULAR_POLICY_URI = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"
SENSITIVE_POLICY_URI = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
SOURCE_ROLE = ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "performer")
RECIPIENT_ROLE = ("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")
ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
# The roles under which someone other than the member may consent for them (spec §3.4: a SecurityRoleType role
# "such as" HPOWATT or DPOWATT): the powers of attorney and a legal guardian.
REPRESENTATIVE_ROLES = frozenset({(ROLE_CODE_SYSTEM, code) for code in ("HPOWATT", "DPOWATT", "POWATT", "SPOWATT",
                                                                        "GUARD")})
REFERENCE_SYSTEM = "reference"  # an actor named by a literal reference ("Organization/x") rather than an identifier

POLICY_BY_URI = {REGULAR_POLICY_URI: "regular", SENSITIVE_POLICY_URI: "sensitive"}

ActorId = tuple[str, str]  # (identifier system, value), or (REFERENCE_SYSTEM, "Organization/id")


class DecisionKind(StrEnum):
    COMPLY_ALL = "comply-all"
    COMPLY_NON_SENSITIVE = "comply-non-sensitive"
    CANNOT_COMPLY = "cannot-comply"


class Reason(StrEnum):
    COMPLIES = "complies"
    NO_CONSENT = "no consent on file"
    UNKNOWN_POLICY = "unknown policy"
    PERIOD_NOT_VALID = "period not valid now"
    NOT_RECIPIENT = "requester is not the IRCP recipient"
    NOT_SOURCE = "we are not the performer/source"
    REVOKED = "revoked"
    REJECTED = "rejected"
    CANNOT_SEGMENT = "segmentation unavailable for #regular"
    BLOCKED = "member blocked sharing"
    REPRESENTATIVE_ROLE = "representative without an allowed role"


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reason: Reason

    @property
    def allowed(self) -> bool:
        return self.kind is not DecisionKind.CANNOT_COMPLY

    @property
    def include_sensitive(self) -> bool:
        """Sensitive resources may be disclosed only under a #sensitive consent."""
        return self.kind is DecisionKind.COMPLY_ALL


@dataclass(frozen=True)
class ConsentFacts:
    """What the decision needs from a consent; built from a stored row or a submitted Consent resource."""

    policy: str  # "regular", "sensitive" or "unknown"
    period_start: date | None
    period_end: date | None
    status: str = "active"  # active, revoked, rejected
    sources: frozenset[ActorId] = field(default_factory=frozenset)
    recipients: frozenset[ActorId] = field(default_factory=frozenset)
    representative: Representative | None = None  # someone other than the member signed


@dataclass(frozen=True)
class Representative:
    """Who signed for the member (Consent.performer, not the member) and the roles its provision.actor gives it."""

    reference: str
    name: str = ""
    roles: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def allowed_role(self) -> str:
        """The first allowed role code it holds ("" when none: the consent cannot be used)."""
        return next((code for system, code in sorted(self.roles) if (system, code) in REPRESENTATIVE_ROLES), "")

    @property
    def role_text(self) -> str:
        return self.allowed_role or ", ".join(code for _, code in sorted(self.roles))


NO_CONSENT = Decision(DecisionKind.CANNOT_COMPLY, Reason.NO_CONSENT)


BLOCKED = Decision(DecisionKind.CANNOT_COMPLY, Reason.BLOCKED)


def decide(facts: ConsentFacts | None, *, requester: Iterable[ActorId], us: Iterable[ActorId],
           can_segment: bool, now: datetime | date, blocked: bool = False) -> Decision:
    """Comply with everything, with non-sensitive data only, or not at all — and why.

    `blocked`: the member told us not to share with this requester; it wins over any consent.
    """
    if blocked:
        return BLOCKED
    if facts is None:
        return NO_CONSENT
    today = now.date() if isinstance(now, datetime) else now
    refuse = lambda reason: Decision(DecisionKind.CANNOT_COMPLY, reason)  # noqa: E731
    if facts.status == "revoked":
        return refuse(Reason.REVOKED)
    if facts.status != "active":
        return refuse(Reason.REJECTED)
    if facts.policy not in ("regular", "sensitive"):
        return refuse(Reason.UNKNOWN_POLICY)
    if facts.period_start is None or facts.period_end is None or not (
            facts.period_start <= today <= facts.period_end):
        return refuse(Reason.PERIOD_NOT_VALID)
    if not facts.sources & set(us):
        return refuse(Reason.NOT_SOURCE)
    if not facts.recipients & set(requester):
        return refuse(Reason.NOT_RECIPIENT)
    if facts.representative is not None and not facts.representative.allowed_role:
        return refuse(Reason.REPRESENTATIVE_ROLE)
    if facts.policy == "sensitive":
        return Decision(DecisionKind.COMPLY_ALL, Reason.COMPLIES)
    if not can_segment:
        return refuse(Reason.CANNOT_SEGMENT)
    return Decision(DecisionKind.COMPLY_NON_SENSITIVE, Reason.COMPLIES)


# --- reading a submitted Consent resource --------------------------------------------------------

def _has_role(actor: Mapping[str, Any], role: tuple[str, str]) -> bool:
    codings = (actor.get("role") or {}).get("coding") or []
    return any((c.get("system"), c.get("code")) == role for c in codings if isinstance(c, dict))


def actor_ids(reference: Any, contained: Mapping[str, Mapping[str, Any]]) -> set[ActorId]:
    """Who a Reference names: its identifier, its literal reference, or a contained Organization's ids."""
    ids: set[ActorId] = set()
    if not isinstance(reference, dict):
        return ids
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        ids.add((identifier.get("system") or "", str(identifier["value"])))
    literal = reference.get("reference")
    if isinstance(literal, str) and literal:
        if literal.startswith("#"):
            target = contained.get(literal[1:]) or {}
            for item in target.get("identifier") or []:
                if isinstance(item, dict) and item.get("value"):
                    ids.add((item.get("system") or "", str(item["value"])))
        else:
            ids.add((REFERENCE_SYSTEM, "/".join(literal.rstrip("/").split("/")[-2:])))
    return ids


def _name_of(resource: Mapping[str, Any]) -> str:
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    if not names:
        return ""
    name = names[0]
    return name.get("text") or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()


def representative_of(resource: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]],
                      actors: Iterable[Mapping[str, Any]]) -> Representative | None:
    """The authorized representative (spec §3.4): a performer that is not the member, with the roles of the
    provision.actor that references it. None when the member signed (or no performer is named)."""
    patient = (resource.get("patient") or {}).get("reference") if isinstance(resource.get("patient"), dict) else None
    for performer in resource.get("performer") or []:
        reference = performer.get("reference") if isinstance(performer, dict) else None
        if not isinstance(reference, str) or not reference or reference == patient:
            continue
        roles: set[tuple[str, str]] = set()
        for actor in actors:
            if isinstance(actor, dict) and (actor.get("reference") or {}).get("reference") == reference:
                roles |= {(c.get("system") or "", c.get("code") or "")
                          for c in (actor.get("role") or {}).get("coding") or [] if isinstance(c, dict)}
        target = contained.get(reference[1:], {}) if reference.startswith("#") else {}
        name = _name_of(target) or (performer.get("display") or "")
        return Representative(reference=reference, name=name, roles=frozenset(roles))
    return None


def policy_of(resource: Mapping[str, Any]) -> tuple[str, str]:
    """(policy, uri) of a Consent; an unrecognised or missing URI gives "unknown"."""
    uris = [p.get("uri", "") for p in resource.get("policy") or [] if isinstance(p, dict)]
    for uri in uris:
        if uri in POLICY_BY_URI:
            return POLICY_BY_URI[uri], uri
    return "unknown", (uris[0] if uris else "")


def status_of(resource: Mapping[str, Any]) -> str:
    """FHIR Consent.status folded to ours: active; inactive/entered-in-error → revoked; others → rejected."""
    status = resource.get("status")
    if status == "active":
        return "active"
    if status in ("inactive", "entered-in-error"):
        return "revoked"
    return "rejected"


def facts_from_resource(resource: Mapping[str, Any] | None) -> ConsentFacts | None:
    """The decision's facts read from an HRex Consent; None when there is no Consent resource at all."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        return None
    contained = {c.get("id"): c for c in resource.get("contained") or [] if isinstance(c, dict) and c.get("id")}
    provision = resource.get("provision") if isinstance(resource.get("provision"), dict) else {}
    period = provision.get("period") if isinstance(provision.get("period"), dict) else {}
    sources: set[ActorId] = set()
    recipients: set[ActorId] = set()
    if provision.get("type", "permit") == "permit":
        for actor in provision.get("actor") or []:
            if not isinstance(actor, dict):
                continue
            if _has_role(actor, SOURCE_ROLE):
                sources |= actor_ids(actor.get("reference"), contained)
            if _has_role(actor, RECIPIENT_ROLE):
                recipients |= actor_ids(actor.get("reference"), contained)
    policy, _ = policy_of(resource)
    actors = [a for a in provision.get("actor") or [] if isinstance(a, dict)]
    return ConsentFacts(
        policy=policy, period_start=parse_fhir_date(period.get("start")), period_end=parse_fhir_date(period.get("end")),
        status=status_of(resource), sources=frozenset(sources), recipients=frozenset(recipients),
        representative=representative_of(resource, contained, actors),
    )


def organization_ids(*, npi: str = "", organization_id: str = "") -> frozenset[ActorId]:
    """The actor ids by which a payer may be named in a Consent (NPI identifier, Organization reference)."""
    ids: set[ActorId] = set()
    if npi:
        ids.add((NPI_SYSTEM, npi))
    if organization_id:
        ids.add((REFERENCE_SYSTEM, f"Organization/{organization_id}"))
    return frozenset(ids)
