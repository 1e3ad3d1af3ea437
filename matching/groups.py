"""The Groups of a bulk member match (spec §2.4–2.5): building, persisting, and writing them as NDJSON.

MatchedMembers is always produced (even empty) and points at our Patients; NonMatchedMembers and
ConsentConstrainedMembers point only at the submitted Patients, contained — our ids never appear there.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import transaction

from matching import store
from matching.models import MatchJob, MemberMatchGroup
from pdex.jobs.outputs import write_output_file
from pdex.jsonbody import gc_paused
from pdex.models import Partner

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
RESULT_SYSTEM = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS"
MATCH_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group"
NO_MATCH_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-no-match-group"
OUT_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-parameters-multi-member-match-bundle-out"
EXT_PARAMETERS = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters"
EXT_COVERAGE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-coverage"

# code → (display, Group.name, output parameter name, profile)
KINDS = {
    MemberMatchGroup.Code.MATCH: ("Matched", "Matched members", "MatchedMembers", MATCH_PROFILE),
    MemberMatchGroup.Code.NO_MATCH: ("Not Matched", "Not Matched members", "NonMatchedMembers", NO_MATCH_PROFILE),
    MemberMatchGroup.Code.CONSENT_CONSTRAINT: ("Consent Constraint", "Consent Constraint members",
                                               "ConsentConstrainedMembers", NO_MATCH_PROFILE),
}


def clean_contained(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A submitted resource as FHIR allows it contained: no versionId, lastUpdated, security, nested contained."""
    cleaned = dict(resource)  # shallow: only top-level keys and meta change, the rest is shared
    cleaned.pop("contained", None)
    if isinstance(cleaned.get("meta"), dict):
        meta = {k: v for k, v in cleaned["meta"].items() if k not in ("versionId", "lastUpdated", "security")}
        if meta:
            cleaned["meta"] = meta
        else:
            cleaned.pop("meta")
    return cleaned


@dataclass
class SubmittedMember:
    """A decided entry's submitted Patient and CoverageToMatch, kept as JSON text until a Group needs them."""

    patient_json: str | None
    coverage_json: str | None = None

    @cached_property
    def patient(self) -> dict[str, Any]:
        return json.loads(self.patient_json) if self.patient_json else {}

    @cached_property
    def coverage(self) -> dict[str, Any] | None:
        return json.loads(self.coverage_json) if self.coverage_json else None


def group_resource(*, group_id: str, code: str, partner: Partner, run_date: date,
                   members: list[SubmittedMember], our_references: list[str | None]) -> dict[str, Any]:
    """One Group of the submitted members; `our_references` are our Patient references (match Group only).

    The submitted Patient is contained once per id; when an id comes back more than once, each member also
    carries its contained CoverageToMatch (base-ext-match-coverage), as spec §12.20 asks.
    """
    display, name, _, profile = KINDS[code]
    coding = {"system": RESULT_SYSTEM, "code": code, "display": display}
    patient_ids = [str(m.patient.get("id") or f"member-{i}") for i, m in enumerate(members)]
    repeated = {pid for pid, times in Counter(patient_ids).items() if times > 1}
    contained: list[dict[str, Any]] = []
    contained_ids: set[str] = set()
    group_members = []
    for index, (member, patient_id, reference) in enumerate(zip(members, patient_ids, our_references,
                                                                strict=True)):
        if patient_id not in contained_ids:
            patient = clean_contained(member.patient)
            patient["id"] = patient_id
            contained.append(patient)
            contained_ids.add(patient_id)
        extensions = [{"url": EXT_PARAMETERS, "valueReference": {"reference": f"#{patient_id}"}}]
        if patient_id in repeated and member.coverage:
            coverage = clean_contained(member.coverage)
            coverage_id = str(coverage.get("id") or f"coverage-{index}")
            if coverage_id in contained_ids:
                coverage_id = f"coverage-{index}"
            coverage["id"] = coverage_id
            contained.append(coverage)
            contained_ids.add(coverage_id)
            extensions.append({"url": EXT_COVERAGE, "valueReference": {"reference": f"#{coverage_id}"}})
        group_members.append({"entity": {"reference": reference or f"#{patient_id}", "extension": extensions}})
    requester = {"system": NPI_SYSTEM, "value": partner.npi} if partner.npi else None
    group: dict[str, Any] = {
        "resourceType": "Group",
        "id": group_id,
        "meta": {"profile": [profile]},
        "contained": contained,
        "identifier": [requester] if requester else [],
        "type": "person",
        "actual": True,
        "code": {"coding": [coding]},
        "name": name,
        "quantity": len(group_members),
        "managingEntity": {"identifier": {"system": NPI_SYSTEM, "value": settings.PAYER_NPI},
                           "display": settings.PAYER_NAME},
        "member": group_members,
    }
    if code == MemberMatchGroup.Code.MATCH:
        value_reference: dict[str, Any] = {"display": partner.name}
        if requester:
            value_reference["identifier"] = requester
        group["characteristic"] = [{"code": {"coding": [coding]}, "valueReference": value_reference,
                                    "exclude": False, "period": {"start": run_date.isoformat()}}]
    for key in ("contained", "identifier"):
        if not group[key]:
            group.pop(key)
    return group


def build_and_store(job: MatchJob) -> dict[str, str]:
    """Persist the job's Groups (match always; the others when they have members); code → Group JSON text.

    Each Group is serialized once: the same text is stored, written to the Group file and wrapped in the
    Parameters envelope (a MatchedMembers Group of 10,000 members is megabytes of JSON). The cycle collector
    is off meanwhile: the submitted Patients parsed back are hundreds of thousands of objects it would walk
    again and again while the Groups grow, for cycles JSON cannot make.
    """
    with gc_paused():
        return _build_and_store(job)


def _build_and_store(job: MatchJob) -> dict[str, str]:
    by_code: dict[str, list[tuple]] = {code: [] for code in KINDS}
    for row in store.decided_entries(job.id):
        if row[1] in by_code:
            by_code[row[1]].append(row)
    run_date = (job.transaction_time or job.created_at).date()
    built: dict[str, str] = {}
    with transaction.atomic():
        for code, rows in by_code.items():
            if not rows and code != MemberMatchGroup.Code.MATCH:
                continue
            group = (MemberMatchGroup.objects.filter(job=job, code=code).defer("resource").first()
                     or MemberMatchGroup(job=job, code=code, partner=job.partner, resource={}))
            group.name = KINDS[code][1]
            group.identifier_system, group.identifier_value = (NPI_SYSTEM, job.partner.npi) if job.partner.npi \
                else ("", "")
            group.save(update_fields=None if group._state.adding else ["name", "identifier_system",
                                                                       "identifier_value", "last_updated"])
            matched = code == MemberMatchGroup.Code.MATCH
            resource = group_resource(
                group_id=group.id, code=code, partner=job.partner, run_date=run_date,
                members=[SubmittedMember(patient, coverage) for _, _, _, _, patient, coverage in rows],
                our_references=[f"Patient/{fhir_id}" if matched else None for _, _, _, fhir_id, _, _ in rows])
            resource["meta"].update(versionId=str(group.version), lastUpdated=instant(group.last_updated))
            built[code] = json.dumps(resource, separators=(",", ":"))
            store.set_group_resource(group.id, built[code])
            if matched:
                store.add_group_members(group.id, [member_id for _, _, member_id, _, _, _ in rows])
    return built


def instant(moment: Any) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def served(group: MemberMatchGroup) -> dict[str, Any]:
    """The stored Group with its current meta.versionId and meta.lastUpdated, as read and files give it."""
    resource = dict(group.resource)
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(group.version)
    meta["lastUpdated"] = instant(group.last_updated)
    resource["meta"] = meta
    return resource


def parameters_envelope(built: Mapping[str, str]) -> str:
    """The 2.1.0-style pdex-parameters-multi-member-match-bundle-out wrapping the same Groups (as text)."""
    head = json.dumps({"resourceType": "Parameters", "meta": {"profile": [OUT_PROFILE]}}, separators=(",", ":"))
    parts = ",".join(f'{{"name":"{KINDS[code][2]}","resource":{built[code]}}}' for code in KINDS if code in built)
    return f'{head[:-1]},"parameter":[{parts}]}}'


def write_outputs(job: MatchJob, built: Mapping[str, str]) -> None:
    """Group NDJSON (the Groups) and Parameters NDJSON (one envelope) through the shared output writer."""
    write_output_file(partner=job.partner, job_id=job.id, resource_type="Group",
                      lines=(built[code].encode() for code in KINDS if code in built), sequence=0)
    write_output_file(partner=job.partner, job_id=job.id, resource_type="Parameters",
                      lines=[parameters_envelope(built).encode()], sequence=1)
