"""What we do to a resource received from a previous payer before it enters our store: pure functions.

- **Ids of our own.** Their ids are theirs: another payer's `Encounter/1` must never overwrite ours. Each
  resource gets `uuid5(payer namespace, their id)` — the same id every time the same resource comes again, so
  a second receipt updates the first instead of adding a copy — and every reference to their server (relative,
  or absolute on their base, or `urn:uuid:`) is rewritten the same way.
- **Their member is our member.** References to their Patient become references to our member's Patient (the
  link learnt from their MatchedMembers Group). Their Patient resource itself is kept under its own id with
  `link` → our Patient (`seealso`), attached to our member.
- **Nothing of anyone else.** A resource that belongs to a Patient not matched in this pull, or to no member
  although its type is a member's, is not taken in.
- **Provenance.** Theirs (the transmitter Provenance, author Provenance) is kept, its targets narrowed to what
  we hold; ours is added per resource: a receipt naming them as the source, us as custodian, when we received
  it and in what format (PDex Provenance, spec §5.6).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pdex.extract import SHARED_TYPES, format_instant, member_reference, reference_target

PDEX_PROVENANCE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance"
SOURCE_FROM = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/ProvenanceSourceFrom"
PAYER_DATA_SOURCE = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/ProvenancePayerDataSource"
AGENT_ROLES = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/ProvenanceAgentRoleType"
PARTICIPANT_TYPES = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
FHIR_R4 = ("hl7fhirr4", "FHIR R4")
PROVENANCE = "Provenance"


@dataclass(frozen=True)
class Source:
    """The payer a download comes from."""

    name: str
    npi: str
    fhir_base: str
    namespace: uuid.UUID

    def local_id(self, their_id: str) -> str:
        """Our id for their resource: the same for the same resource, whatever its type, every time."""
        return str(uuid.uuid5(self.namespace, their_id))


@dataclass(frozen=True)
class Receiver:
    """Us: named in the receipt Provenance as the custodian."""

    name: str
    npi: str
    organization_id: str


@dataclass(frozen=True)
class Localized:
    """A resource ready for our store: our ids, our member."""

    resource: dict[str, Any]
    member_fhir_id: str | None
    their_type: str
    their_id: str


@dataclass(frozen=True)
class Skipped:
    """A resource not taken in, and why (a reason for the counts: never the resource)."""

    reason: str


NOT_IN_PULL = "belongs to a member not matched in this pull"
NO_MEMBER = "names no member"


def _rewrite(node: Any, source: Source, members: Mapping[str, str]) -> Any:
    """A deep copy of `node` with every reference to their server pointing at our ids."""
    if isinstance(node, list):
        return [_rewrite(item, source, members) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite(value, source, members) for key, value in node.items()}
    reference = node.get("reference")
    if isinstance(reference, str):
        out["reference"] = local_reference(reference, source, members)
    return out


def local_reference(reference: str, source: Source, members: Mapping[str, str]) -> str:
    """A reference of theirs as it reads in our store; references to other servers stay as they are."""
    if reference.startswith("#"):
        return reference
    if reference.startswith(("http://", "https://")) and not reference.startswith(source.fhir_base + "/"):
        return reference
    target = reference_target(reference)
    if target is None:
        return reference
    resource_type, their_id = target
    if resource_type in (None, "Patient") and their_id in members:
        return f"Patient/{members[their_id]}"
    if resource_type is None:
        return f"urn:uuid:{source.local_id(their_id)}"
    return f"{resource_type}/{source.local_id(their_id)}"


def localize(resource: dict[str, Any], *, source: Source, members: Mapping[str, str]) -> Localized | Skipped:
    """Their resource with our ids and our member; `members` maps their Patient ids to ours (this pull's links)."""
    their_type, their_id = resource["resourceType"], resource["id"]
    if their_type in SHARED_TYPES or their_type == PROVENANCE:
        member = None
    else:
        owner = member_reference(resource)
        if owner is None:
            return Skipped(NO_MEMBER)
        member = members.get(owner)
        if member is None:
            return Skipped(NOT_IN_PULL)
    local = _rewrite(resource, source, members)
    local["id"] = source.local_id(their_id)
    if their_type == PROVENANCE:
        # A Provenance is about the resources sent, their Patient included: its targets name our copy of that
        # Patient, not our member's own Patient record (as a subject or patient reference does).
        local["target"] = [_rewrite(target, source, {}) for target in resource.get("target") or []]
    if their_type == "Patient":
        links = [link for link in local.get("link") or [] if isinstance(link, dict)]
        local["link"] = [*links, {"other": {"reference": f"Patient/{member}"}, "type": "seealso"}]
    return Localized(resource=local, member_fhir_id=member, their_type=their_type, their_id=their_id)


def narrow_targets(provenance: dict[str, Any], held: set[tuple[str, str]]) -> dict[str, Any] | None:
    """Their Provenance (already localized) naming only targets we hold; None when none is left."""
    kept = []
    for target in provenance.get("target") or []:
        parsed = reference_target(target.get("reference")) if isinstance(target, dict) else None
        if parsed and parsed[0] and (parsed[0], parsed[1]) in held:
            kept.append(target)
    if not kept:
        return None
    narrowed = copy.copy(provenance)
    narrowed["target"] = kept
    return narrowed


def targets_of(provenance: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for target in provenance.get("target") or []:
        parsed = reference_target(target.get("reference")) if isinstance(target, dict) else None
        if parsed and parsed[0]:
            found.append((parsed[0], parsed[1]))
    return found


def receipt_provenance(received: Localized, *, source: Source, receiver: Receiver,
                       received_at: datetime) -> dict[str, Any]:
    """Our receipt of one resource (PDex Provenance): from whom (their NPI, as `source`), held by us
    (`custodian`), when, the original on their server, and its format (ProvenanceSourceFrom: FHIR R4)."""
    instant = format_instant(received_at)
    local_type, local_id = received.resource["resourceType"], received.resource["id"]
    return {
        "resourceType": PROVENANCE,
        "id": str(uuid.uuid5(source.namespace, f"receipt/{received.their_type}/{received.their_id}")),
        "meta": {"lastUpdated": instant, "profile": [PDEX_PROVENANCE]},
        "target": [{"reference": f"{local_type}/{local_id}"}],
        "recorded": instant,
        "agent": [
            {"type": {"coding": [{"system": AGENT_ROLES, "code": "source", "display": "Source"}]},
             "who": {"identifier": {"system": NPI_SYSTEM, "value": source.npi}, "display": source.name}},
            {"type": {"coding": [{"system": PARTICIPANT_TYPES, "code": "custodian", "display": "Custodian"}]},
             "who": {"reference": f"Organization/{receiver.organization_id}", "display": receiver.name}},
        ],
        "entity": [{
            "role": "source",
            "what": {"reference": f"{source.fhir_base}/{received.their_type}/{received.their_id}"},
            "extension": [{"url": SOURCE_FROM, "valueCodeableConcept": {"coding": [
                {"system": PAYER_DATA_SOURCE, "code": FHIR_R4[0], "display": FHIR_R4[1]}]}}],
        }],
    }
