"""The Groups of a bulk member match (spec §2.4–2.5): building, persisting, and writing them as NDJSON.

MatchedMembers is always produced (even empty) and points at our Patients; NonMatchedMembers and
ConsentConstrainedMembers point only at the submitted Patients, contained — our ids never appear there.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import date
from typing import Any

from django.conf import settings
from django.db import transaction

from matching.models import GroupMember, MatchEntry, MatchJob, MemberMatchGroup
from pdex.models import Member, Partner

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
    cleaned = copy.deepcopy(dict(resource))
    cleaned.pop("contained", None)
    meta = cleaned.get("meta")
    if isinstance(meta, dict):
        for key in ("versionId", "lastUpdated", "security"):
            meta.pop(key, None)
        if not meta:
            cleaned.pop("meta")
    return cleaned


def group_resource(*, group_id: str, code: str, partner: Partner, run_date: date,
                   members: list[dict[str, Any]], our_references: list[str | None]) -> dict[str, Any]:
    """One Group. `members` holds per member {patient, coverage}; `our_references` our Patient refs (match only).

    The submitted Patient is contained once per id; when an id comes back more than once, each member also
    carries its contained CoverageToMatch (base-ext-match-coverage), as spec §12.20 asks.
    """
    display, name, _, profile = KINDS[code]
    coding = {"system": RESULT_SYSTEM, "code": code, "display": display}
    patient_ids = [str(m["patient"].get("id") or f"member-{i}") for i, m in enumerate(members)]
    repeated = {pid for pid in patient_ids if patient_ids.count(pid) > 1} if len(set(patient_ids)) < len(
        patient_ids) else set()
    contained: list[dict[str, Any]] = []
    contained_ids: set[str] = set()
    group_members = []
    for index, (member, patient_id, reference) in enumerate(zip(members, patient_ids, our_references,
                                                                strict=True)):
        if patient_id not in contained_ids:
            patient = clean_contained(member["patient"])
            patient["id"] = patient_id
            contained.append(patient)
            contained_ids.add(patient_id)
        extensions = [{"url": EXT_PARAMETERS, "valueReference": {"reference": f"#{patient_id}"}}]
        if patient_id in repeated and member.get("coverage"):
            coverage = clean_contained(member["coverage"])
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


def _submitted(entry: MatchEntry) -> dict[str, Any]:
    from matching.parameters import request_from_bundle

    request = request_from_bundle(entry.bundle)
    return {"patient": request.patient, "coverage": request.coverage_to_match}


def build_and_store(job: MatchJob) -> dict[str, dict[str, Any]]:
    """Persist the job's Groups (match always; the others when they have members); code → Group resource."""
    by_code: dict[str, list[MatchEntry]] = {code: [] for code in KINDS}
    for entry in MatchEntry.objects.filter(job=job).order_by("index").iterator(chunk_size=2000):
        if entry.outcome in by_code:
            by_code[entry.outcome].append(entry)
    fhir_ids = dict(Member.objects.filter(pk__in={e.member_id for e in by_code[MemberMatchGroup.Code.MATCH]})
                    .values_list("pk", "fhir_id"))
    run_date = (job.transaction_time or job.created_at).date()
    built: dict[str, dict[str, Any]] = {}
    with transaction.atomic():
        for code, entries in by_code.items():
            if not entries and code != MemberMatchGroup.Code.MATCH:
                continue
            group = (MemberMatchGroup.objects.filter(job=job, code=code).first()
                     or MemberMatchGroup(job=job, code=code, partner=job.partner))
            matched = code == MemberMatchGroup.Code.MATCH
            references = [f"Patient/{fhir_ids[e.member_id]}" if matched else None for e in entries]
            group.resource = group_resource(group_id=group.id, code=code, partner=job.partner, run_date=run_date,
                                            members=[_submitted(e) for e in entries], our_references=references)
            group.name = KINDS[code][1]
            group.identifier_system, group.identifier_value = (NPI_SYSTEM, job.partner.npi) if job.partner.npi \
                else ("", "")
            group.save()
            if matched:
                GroupMember.objects.bulk_create(
                    [GroupMember(group=group, member_id=member_id) for member_id in {e.member_id for e in entries}],
                    batch_size=2000, ignore_conflicts=True)
            built[code] = served(group)
    return built


def served(group: MemberMatchGroup) -> dict[str, Any]:
    """The stored Group with its current meta.versionId and meta.lastUpdated, as read and files give it."""
    resource = dict(group.resource)
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(group.version)
    meta["lastUpdated"] = group.last_updated.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    resource["meta"] = meta
    return resource


def parameters_envelope(built: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The 2.1.0-style pdex-parameters-multi-member-match-bundle-out wrapping the same Groups."""
    return {"resourceType": "Parameters", "meta": {"profile": [OUT_PROFILE]},
            "parameter": [{"name": KINDS[code][2], "resource": built[code]} for code in KINDS if code in built]}


def write_outputs(job: MatchJob, built: Mapping[str, dict[str, Any]]) -> None:
    """Group NDJSON (the Groups) and Parameters NDJSON (one envelope) through the shared output writer."""
    from exports.outputs import write_output_file

    def line(resource: dict[str, Any]) -> bytes:
        return json.dumps(resource, separators=(",", ":")).encode()

    write_output_file(partner=job.partner, job_id=job.id, resource_type="Group",
                      lines=(line(built[code]) for code in KINDS if code in built), sequence=0)
    write_output_file(partner=job.partner, job_id=job.id, resource_type="Parameters",
                      lines=[line(parameters_envelope(built))], sequence=1)
