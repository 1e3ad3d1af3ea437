"""A consent staff record by hand (a paper form, a call to our member line), in the HRex shape a partner sends.

Building the same resource means the same decision judges it (consent.decision), and the stored row looks
like any other: the decision, the export and the history read it without a second code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from consent.decision import (
    NPI_SYSTEM,
    POLICY_BY_URI,
    RECIPIENT_ROLE,
    REFERENCE_SYSTEM,
    ROLE_CODE_SYSTEM,
    SOURCE_ROLE,
    ActorId,
)

URI_BY_POLICY = {policy: uri for uri, policy in POLICY_BY_URI.items()}
REPRESENTATIVE_ID = "representative"


@dataclass(frozen=True)
class StaffConsent:
    """What the admin form collects."""

    patient_id: str
    recipient_npi: str
    policy: str  # "regular" or "sensitive"
    start: date
    end: date
    representative_name: str = ""
    representative_relationship: str = ""  # v3-RoleCode relationship (e.g. DAU), optional
    representative_role: str = ""  # v3-RoleCode, e.g. HPOWATT
    document_reference: str = ""  # where the signed form is kept (a DocumentReference or a URL)
    attachment: dict[str, Any] | None = None  # or: the uploaded form's Attachment (no data, hash and size)


def _actor(role: tuple[str, str], actor: ActorId) -> dict[str, Any]:
    system, value = actor
    reference = {"reference": value} if system == REFERENCE_SYSTEM else {"identifier": {"system": system,
                                                                                       "value": value}}
    return {"role": {"coding": [{"system": role[0], "code": role[1]}]}, "reference": reference}


def build_resource(consent: StaffConsent, *, us: ActorId) -> dict[str, Any]:
    """The HRex Consent for what staff recorded; a representative is a contained RelatedPerson (spec §3.4)."""
    patient = {"reference": f"Patient/{consent.patient_id}"}
    actors = [_actor(SOURCE_ROLE, us), _actor(RECIPIENT_ROLE, (NPI_SYSTEM, consent.recipient_npi))]
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "meta": {"profile": ["http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-consent"]},
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]}],
        "patient": patient,
        "performer": [patient],
        "policy": [{"uri": URI_BY_POLICY.get(consent.policy, consent.policy)}],
        "provision": {
            "type": "permit", "period": {"start": consent.start.isoformat(), "end": consent.end.isoformat()},
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "disclose"}]}],
            "actor": actors,
        },
    }
    if consent.representative_name:
        person: dict[str, Any] = {"resourceType": "RelatedPerson", "id": REPRESENTATIVE_ID, "patient": patient,
                                  "name": [{"text": consent.representative_name}]}
        if consent.representative_relationship:
            person["relationship"] = [{"coding": [{"system": ROLE_CODE_SYSTEM,
                                                   "code": consent.representative_relationship}]}]
        resource["contained"] = [person]
        resource["performer"] = [{"reference": f"#{REPRESENTATIVE_ID}"}]
        if consent.representative_role:
            actors.append({"role": {"coding": [{"system": ROLE_CODE_SYSTEM, "code": consent.representative_role}]},
                           "reference": {"reference": f"#{REPRESENTATIVE_ID}"}})
    if consent.attachment:
        resource["sourceAttachment"] = consent.attachment
    elif consent.document_reference:
        resource["sourceReference"] = {"reference": consent.document_reference}
    return resource
