"""The member match requests we send a previous payer: one MemberBundle per consented member (pure).

MemberPatient is our Patient (its id is how their Groups tell us who is who: they contain it verbatim); the
old card becomes CoverageToMatch (their member id and subscriber id, their NPI as payor); our coverage is
CoverageToLink (our NPI, which their consent check holds against the IRCP recipient); the Consent is the one
we collected. A member they matched before also carries their UMB (HRex mm-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
MB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
UMB = {"coding": [{"system": "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "code": "UMB"}]}
RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
HREX_PATIENT = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-patient-demographics"
HREX_COVERAGE = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-coverage"
# Demographics a match uses; nothing else of our Patient leaves (no telecom, no other identifiers).
DEMOGRAPHICS = ("name", "birthDate", "gender", "address", "extension")


@dataclass(frozen=True)
class MatchFacts:
    """What one member's MemberBundle is made of."""

    patient: dict[str, Any]  # our Patient resource
    member_number: str  # our member id
    coverage_start: date
    old_member_id: str
    old_subscriber_id: str
    old_relationship: str
    old_coverage_end: date | None
    consent: dict[str, Any]  # the HRex Consent we collected
    their_umb: str = ""


@dataclass(frozen=True)
class Payers:
    """The previous payer (asked) and us (asking)."""

    their_npi: str
    their_name: str
    their_member_id_system: str
    our_npi: str
    our_name: str
    our_member_id_system: str


def member_patient(facts: MatchFacts, payers: Payers) -> dict[str, Any]:
    patient = facts.patient
    body: dict[str, Any] = {"resourceType": "Patient", "id": patient["id"], "meta": {"profile": [HREX_PATIENT]}}
    body.update({key: patient[key] for key in DEMOGRAPHICS if key in patient and key != "extension"})
    birth_sex = [e for e in patient.get("extension") or []
                 if isinstance(e, dict) and e.get("url", "").endswith("us-core-birthsex")]
    if birth_sex:
        body["extension"] = birth_sex
    identifiers = []
    if facts.member_number:
        identifiers.append({"type": MB, "system": payers.our_member_id_system, "value": facts.member_number})
    if facts.their_umb:
        identifiers.append({"type": UMB, "value": facts.their_umb})
    if identifiers:
        body["identifier"] = identifiers
    return body


def coverage_to_match(facts: MatchFacts, payers: Payers) -> dict[str, Any]:
    coverage: dict[str, Any] = {
        "resourceType": "Coverage", "id": f"old-coverage-{facts.patient['id']}"[:64],
        "meta": {"profile": [HREX_COVERAGE]}, "status": "active",
        "relationship": {"coding": [{"system": RELATIONSHIP, "code": facts.old_relationship or "self"}]},
        "beneficiary": {"reference": f"Patient/{facts.patient['id']}"},
        "payor": [{"identifier": {"system": NPI_SYSTEM, "value": payers.their_npi}, "display": payers.their_name}],
    }
    if facts.old_member_id:
        identifier = {"type": MB, "value": facts.old_member_id}
        if payers.their_member_id_system:
            identifier["system"] = payers.their_member_id_system
        coverage["identifier"] = [identifier]
    if facts.old_subscriber_id:
        coverage["subscriberId"] = facts.old_subscriber_id
    if facts.old_coverage_end:
        coverage["period"] = {"end": facts.old_coverage_end.isoformat()}
    return coverage


def coverage_to_link(facts: MatchFacts, payers: Payers) -> dict[str, Any]:
    coverage: dict[str, Any] = {
        "resourceType": "Coverage", "id": f"new-coverage-{facts.patient['id']}"[:64],
        "meta": {"profile": [HREX_COVERAGE]}, "status": "active",
        "relationship": {"coding": [{"system": RELATIONSHIP, "code": "self"}]},
        "beneficiary": {"reference": f"Patient/{facts.patient['id']}"},
        "payor": [{"identifier": {"system": NPI_SYSTEM, "value": payers.our_npi}, "display": payers.our_name}],
        "period": {"start": facts.coverage_start.isoformat()},
    }
    if facts.member_number:
        coverage["identifier"] = [{"type": MB, "system": payers.our_member_id_system, "value": facts.member_number}]
    return coverage


def member_parts(facts: MatchFacts, payers: Payers) -> list[dict[str, Any]]:
    """The four parts, as a MemberBundle (bulk) and the single-member Parameters both name them."""
    return [
        {"name": "MemberPatient", "resource": member_patient(facts, payers)},
        {"name": "CoverageToMatch", "resource": coverage_to_match(facts, payers)},
        {"name": "CoverageToLink", "resource": coverage_to_link(facts, payers)},
        {"name": "Consent", "resource": facts.consent},
    ]


def bulk_request(members: list[MatchFacts], payers: Payers) -> dict[str, Any]:
    """`$bulk-member-match` input (pdex-parameters-multi-member-match-bundle-in)."""
    return {"resourceType": "Parameters",
            "parameter": [{"name": "MemberBundle", "part": member_parts(facts, payers)} for facts in members]}


def single_request(facts: MatchFacts, payers: Payers) -> dict[str, Any]:
    """`$member-match` input (hrex-parameters-member-match-in)."""
    return {"resourceType": "Parameters", "parameter": member_parts(facts, payers)}
