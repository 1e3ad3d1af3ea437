"""Small builders for member data in tests of the export rules, $everything and search.

Rows get their columns from pdex.extract, exactly as ingest fills them, so the tests judge the rules on
the columns real data would have.
"""

from __future__ import annotations

import copy
import gzip
import json
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pdex.extract import Extracted, extract_configured
from pdex.models import Member, Resource

REQUEST_TIME = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PA_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization"
WHEN_ADJUDICATED = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-when-adjudicated"
REVIEW_ACTION = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewAction"
REVIEW_ACTION_CODE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewActionCode"
REVIEW_CODES = {"approved": "A1", "denied": "A3", "pending": "A4", "cancelled": "C", "partial": "A2"}


def store(resource: dict[str, Any], member: Member | None = None) -> Resource:
    """Save one resource with its extracted columns."""
    columns = extract_configured(resource)
    return Resource.objects.create(
        resource_type=columns.resource_type, fhir_id=columns.fhir_id, member=member, body=resource,
        last_updated=columns.last_updated, service_start=columns.service_start,
        service_end=columns.service_end, sensitive=columns.sensitive, clinical_status=columns.clinical_status,
        eob_use=columns.eob_use, pa_status=columns.pa_status, pa_status_changed=columns.pa_status_changed,
        pa_period_end=columns.pa_period_end, pa_drug=columns.pa_drug, refs=columns.refs,
    )


def make_member(fhir_id: str) -> Member:
    member = Member.objects.create(fhir_id=fhir_id, umb=f"umb-{fhir_id}", member_number=f"mb-{fhir_id}",
                                   family="Doe", given="Jan")
    store({"resourceType": "Patient", "id": fhir_id, "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
           "name": [{"family": "Doe", "given": ["Jan"]}], "gender": "female", "birthDate": "1970-01-01"},
          member)
    return member


def meta(updated: str, *security: str) -> dict[str, Any]:
    body: dict[str, Any] = {"lastUpdated": updated}
    if security:
        body["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}
                            for code in security]
    return body


def encounter(fhir_id: str, patient: str, start: str, *, updated: str = "2026-06-01T00:00:00Z",
              practitioner: str | None = None, security: tuple[str, ...] = (), code: str = "185349003") -> dict:
    body: dict[str, Any] = {
        "resourceType": "Encounter", "id": fhir_id, "meta": meta(updated, *security), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": code}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": start},
    }
    if practitioner:
        body["participant"] = [{"individual": {"reference": f"Practitioner/{practitioner}"}}]
    return body


def observation(fhir_id: str, patient: str, when: str, *, category: str = "laboratory", code: str = "2339-0",
                updated: str = "2026-06-01T00:00:00Z", security: tuple[str, ...] = ()) -> dict:
    return {
        "resourceType": "Observation", "id": fhir_id, "meta": meta(updated, *security), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": 90, "unit": "mg/dL"},
    }


def condition(fhir_id: str, patient: str, onset: str, status: str, *, updated: str = "2026-06-01T00:00:00Z") -> dict:
    return {
        "resourceType": "Condition", "id": fhir_id, "meta": meta(updated),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": status}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": f"Patient/{patient}"}, "onsetDateTime": onset,
    }


def claim_eob(fhir_id: str, patient: str, service: str, *, updated: str = "2026-06-01T00:00:00Z",
              organization: str | None = None) -> dict:
    body: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit", "id": fhir_id, "meta": meta(updated), "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{patient}"},
        "billablePeriod": {"start": service, "end": service}, "created": service,
        "insurer": {"display": "Old Plan"}, "provider": {"display": "Clinic"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Plan"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://snomed.info/sct",
                                                                  "code": "185349003"}]},
                  "servicedDate": service[:10], "unitPrice": {"value": 10.0, "currency": "USD"},
                  "net": {"value": 10.0, "currency": "USD"},
                  "adjudication": [{"category": {"coding": [{"code": "submitted"}]},
                                    "amount": {"value": 10.0, "currency": "USD"}}]}],
        "total": [{"category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 10.0, "currency": "USD"}}],
        "payment": {"amount": {"value": 8.0, "currency": "USD"}},
    }
    if organization:
        body["provider"] = {"reference": f"Organization/{organization}"}
    return body


def prior_auth(fhir_id: str, patient: str, status: str, *, changed: str, period_end: str | None = None,
               drug: bool = False, documents: tuple[str, ...] = (), updated: str = "2026-06-01T00:00:00Z") -> dict:
    """A PDex prior authorization whose reviewAction says `status`, decided at `changed`."""
    product = ({"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"} if drug
               else {"system": "http://www.ama-assn.org/go/cpt", "code": "99213"})
    body: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit", "id": fhir_id, "meta": {**meta(updated), "profile": [PA_PROFILE]},
        "status": "active", "use": "preauthorization",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "patient": {"reference": f"Patient/{patient}"}, "created": changed,
        "insurer": {"display": "Old Plan"}, "provider": {"display": "Clinic"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Plan"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [product]}, "adjudication": [{
            "extension": [
                {"url": REVIEW_ACTION, "extension": [{"url": REVIEW_ACTION_CODE, "valueCodeableConcept": {
                    "coding": [{"system": "https://codesystem.x12.org/005010/306", "code": REVIEW_CODES[status]}]}}]},
                {"url": WHEN_ADJUDICATED, "valueDateTime": changed}],
            "category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 300.0, "currency": "USD"}}]}],
        "total": [{"category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 300.0, "currency": "USD"}}],
    }
    if period_end:
        body["preAuthRefPeriod"] = [{"start": changed, "end": period_end}]
    if documents:
        body["supportingInfo"] = [{
            "sequence": n + 1,
            "category": {"coding": [{"system": "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASSupportingInfoType",
                                     "code": "additionalInformation"}]},
            "valueReference": {"reference": f"DocumentReference/{doc}"}} for n, doc in enumerate(documents)]
    return body


def document(fhir_id: str, patient: str, date: str, *, updated: str = "2026-06-01T00:00:00Z") -> dict:
    return {
        "resourceType": "DocumentReference", "id": fhir_id, "meta": meta(updated), "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
        "subject": {"reference": f"Patient/{patient}"}, "date": date,
        "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
    }


def provenance(fhir_id: str, patient: str, targets: list[str], *, updated: str = "2026-06-01T00:00:00Z") -> dict:
    """An author Provenance of the member's data (store it with the member: it names no patient itself)."""
    return {
        "resourceType": "Provenance", "id": fhir_id, "meta": meta(updated),
        "target": [{"reference": t} for t in targets], "recorded": "2026-06-01T00:00:00Z",
        "agent": [{"who": {"reference": "Organization/org-near"}}],
    }


def shared(resource_type: str, fhir_id: str) -> dict:
    body: dict[str, Any] = {"resourceType": resource_type, "id": fhir_id, "meta": meta("2020-01-01T00:00:00Z")}
    body["name"] = [{"family": "Smith"}] if resource_type == "Practitioner" else fhir_id
    return body


@lru_cache(maxsize=2)
def _shared_index(data_dir: Path) -> tuple[dict[str, list[tuple[dict, Extracted]]], dict[str, tuple[dict, Extracted]]]:
    """../shared/data parsed and extracted once per test run: {patient id: rows}, {Type/id: shared row}."""
    by_patient: dict[str, list[tuple[dict, Extracted]]] = {}
    shared_rows: dict[str, tuple[dict, Extracted]] = {}
    for path in sorted(data_dir.glob("*.ndjson.gz")):
        with gzip.open(path, "rt") as lines:
            for line in lines:
                resource = json.loads(line)
                columns = extract_configured(resource)
                if columns.patient_id is None:
                    shared_rows[f"{columns.resource_type}/{columns.fhir_id}"] = (resource, columns)
                else:
                    by_patient.setdefault(columns.patient_id, []).append((resource, columns))
    return by_patient, shared_rows


def _row(resource: dict, columns: Extracted, member: Member | None) -> Resource:
    return Resource(
        resource_type=columns.resource_type, fhir_id=columns.fhir_id, member=member, body=copy.deepcopy(resource),
        last_updated=columns.last_updated, service_start=columns.service_start,
        service_end=columns.service_end, sensitive=columns.sensitive, clinical_status=columns.clinical_status,
        eob_use=columns.eob_use, pa_status=columns.pa_status, pa_status_changed=columns.pa_status_changed,
        pa_period_end=columns.pa_period_end, pa_drug=columns.pa_drug, refs=columns.refs,
    )


def shared_patient_ids(data_dir: Path) -> list[str]:
    """Patient ids of ../shared/data, most resources first."""
    by_patient, _ = _shared_index(data_dir)
    return sorted(by_patient, key=lambda p: (-len(by_patient[p]), p))


def load_shared_member(data_dir: Path, *, patient_id: str | None = None, largest: bool = False) -> Member:
    """Load one person of ../shared/data (the first by id, the largest, or `patient_id`) and the shared
    resources their data references."""
    by_patient, shared_rows = _shared_index(data_dir)
    if patient_id is None:
        patient_id = shared_patient_ids(data_dir)[0] if largest else sorted(by_patient)[0]
    member = Member.objects.create(fhir_id=patient_id, umb=f"umb-{patient_id}", member_number=f"mb-{patient_id}")
    rows = [_row(resource, columns, member) for resource, columns in by_patient[patient_id]]
    wanted = {ref for row in rows for ref in row.refs}
    existing = set(Resource.objects.filter(member__isnull=True).values_list("resource_type", "fhir_id"))
    for ref in sorted(wanted):
        if ref in shared_rows and tuple(ref.split("/", 1)) not in existing:
            rows.append(_row(*shared_rows[ref], None))
    Resource.objects.bulk_create(rows, batch_size=1000)
    return member


def consent_for(member: Member, partner, *, policy: str = "sensitive", start: str = "2026-01-01",
                end: str = "2027-12-31"):
    """A stored HRex consent from `member` for `partner` that the decision accepts (us as source)."""
    from django.conf import settings

    from consent.services import record_consent

    npi = "http://hl7.org/fhir/sid/us-npi"
    resource = {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]}],
        "patient": {"reference": f"Patient/{member.fhir_id}"},
        "performer": [{"reference": f"Patient/{member.fhir_id}"}],
        "policy": [{"uri": f"http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#{policy}"}],
        "provision": {
            "type": "permit", "period": {"start": start, "end": end},
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "disclose"}]}],
            "actor": [
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                      "code": "performer"}]},
                 "reference": {"identifier": {"system": npi, "value": settings.PAYER_NPI}}},
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                      "code": "IRCP"}]},
                 "reference": {"identifier": {"system": npi, "value": partner.npi}}},
            ],
        },
    }
    return record_consent(member, partner, resource, via="member-match")
