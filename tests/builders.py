"""Builders for the tests' members, FHIR resources and consents.

Every date a builder puts in a fixture is relative to the moment the test runs (`days_ago(30)`,
`years_ago(4)`, `days_from_now(60)`), so no fixture expires: the service judges windows, PA periods and
consent periods against the real clock. The one fixed date, REQUEST_TIME, is for pure rule tests that pass it
as the request time and derive every date they compare from it.

Rows get their columns from pdex.extract, exactly as ingest fills them; members get theirs from
pdex.ingest.member_columns; consents are recorded through consent.services.record_consent, as member match
records them.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.utils import timezone

from consent.decision import NPI_SYSTEM, RECIPIENT_ROLE, REGULAR_POLICY_URI, SENSITIVE_POLICY_URI, SOURCE_ROLE
from consent.models import Consent
from consent.services import record_consent
from matching.models import GroupMember, MemberMatchGroup
from pdex.extract import Extracted, extract_configured
from pdex.ingest import member_columns
from pdex.models import Member, Partner, Resource

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"
FIXTURES = ROOT / "tests" / "fixtures"

When = datetime | date | str

# --- time ----------------------------------------------------------------------------------------------

# A fixed "now" for pure rule tests (export_window, export_context): they pass it as the request time and
# compare it only with dates derived from it, never with the real clock.
REQUEST_TIME = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def days_ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def days_from_now(days: float) -> datetime:
    return timezone.now() + timedelta(days=days)


def years_ago(years: int) -> datetime:
    return timezone.now() - relativedelta(years=years)


def instant(when: When) -> str:
    """A FHIR dateTime (instant precision, UTC) for a datetime; a date as a FHIR date; a string as given."""
    if isinstance(when, str):
        return when
    if isinstance(when, datetime):
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat()


def day(when: When) -> str:
    """A FHIR date (the UTC day of a datetime)."""
    return instant(when)[:10]


def _updated(updated: When | None) -> str:
    return instant(updated if updated is not None else days_ago(180))


# --- stored rows -------------------------------------------------------------------------------------------

def _row(resource: dict[str, Any], columns: Extracted, member: Member | None) -> Resource:
    return Resource(
        resource_type=columns.resource_type, fhir_id=columns.fhir_id, member=member, body=copy.deepcopy(resource),
        last_updated=columns.last_updated, service_start=columns.service_start,
        service_end=columns.service_end, sensitive=columns.sensitive, clinical_status=columns.clinical_status,
        eob_use=columns.eob_use, pa_status=columns.pa_status, pa_status_changed=columns.pa_status_changed,
        pa_period_end=columns.pa_period_end, pa_drug=columns.pa_drug, refs=columns.refs,
    )


def store(resource: dict[str, Any], member: Member | None = None) -> Resource:
    """Save one resource with its extracted columns (a shared resource when `member` is None)."""
    row = _row(resource, extract_configured(resource), member)
    row.save()
    return row


def make_member(fhir_id: str, *, family: str = "Doe", given: Sequence[str] = ("Jan",),
                birth_date: When = "1970-01-01", gender: str = "female", postal_code: str = "",
                umb: str | None = None, member_number: str | None = None, subscriber_id: str = "",
                updated: When | None = None) -> Member:
    """A member as ingest stores one: the Patient resource, and the Member row matching looks people up by."""
    resource = patient(fhir_id, family=family, given=given, birth_date=birth_date, gender=gender,
                       postal_code=postal_code, updated=updated if updated is not None else days_ago(330))
    columns = member_columns(resource)
    if umb:
        columns["umb"] = umb
    member = Member.objects.create(member_number=member_number or f"mb-{fhir_id}", subscriber_id=subscriber_id,
                                   **columns)
    store(resource, member)
    return member


def match_group(partner: Partner, members: Iterable[Member],
                code: str = MemberMatchGroup.Code.MATCH) -> MemberMatchGroup:
    """A partner's member-match Group holding `members`, as bulk member match leaves one."""
    group = MemberMatchGroup.objects.create(partner=partner, code=code, resource={"resourceType": "Group"})
    GroupMember.objects.bulk_create([GroupMember(group=group, member=member) for member in members])
    return group


# --- FHIR resources ------------------------------------------------------------------------------------------

def meta(updated: When, *security: str) -> dict[str, Any]:
    body: dict[str, Any] = {"lastUpdated": instant(updated)}
    if security:
        body["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}
                            for code in security]
    return body


def patient(fhir_id: str, *, family: str = "Doe", given: Sequence[str] = ("Jan",), birth_date: When = "1970-01-01",
            gender: str = "female", postal_code: str = "", updated: When | None = None) -> dict:
    body: dict[str, Any] = {
        "resourceType": "Patient", "id": fhir_id, "meta": meta(_updated(updated)),
        "name": [{"use": "official", "family": family, "given": list(given)}], "gender": gender,
        "birthDate": day(birth_date),
    }
    if postal_code:
        body["address"] = [{"use": "home", "postalCode": postal_code}]
    return body


MB_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}


def coverage(fhir_id: str, patient_id: str, *, start: When | None = None, end: When | None = None,
             updated: When | None = None, status: str = "active", member_id: str | None = None,
             member_id_system: str | None = None, subscriber_id: str | None = None,
             payor: dict[str, Any] | None = None) -> dict:
    """The member's coverage, from `start` (two years ago unless given) to `end` (open unless given); with the
    card's member id (an identifier typed MB) and subscriber id when given; `payor` a Reference (default: a
    display only, which names nobody)."""
    period = {"start": day(start if start is not None else years_ago(2))}
    if end is not None:
        period["end"] = day(end)
    body: dict[str, Any] = {
        "resourceType": "Coverage", "id": fhir_id, "meta": meta(_updated(updated)), "status": status,
        "beneficiary": {"reference": f"Patient/{patient_id}"}, "period": period,
        "payor": [payor or {"display": "Old Plan"}],
    }
    if member_id:
        body["identifier"] = [{"type": MB_TYPE, "value": member_id}]
        if member_id_system:
            body["identifier"][0]["system"] = member_id_system
    if subscriber_id:
        body["subscriberId"] = subscriber_id
    return body


def our_payor() -> dict[str, Any]:
    """A Coverage payor naming us, as a payer's own data does: a reference to our Organization."""
    return {"reference": f"Organization/{settings.PAYER_ORGANIZATION_ID}", "display": settings.PAYER_NAME}


def encounter(fhir_id: str, patient_id: str, start: When | None, *, end: When | None = None,
              updated: When | None = None, practitioner: str | None = None, security: tuple[str, ...] = (),
              code: str = "185349003") -> dict:
    """A finished ambulatory visit on `start` (to `end` when given; no period at all when `start` is None)."""
    body: dict[str, Any] = {
        "resourceType": "Encounter", "id": fhir_id, "meta": meta(_updated(updated), *security), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": code}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if start is not None:
        body["period"] = {"start": instant(start), "end": instant(end if end is not None else start)}
    if practitioner:
        body["participant"] = [{"individual": {"reference": f"Practitioner/{practitioner}"}}]
    return body


def observation(fhir_id: str, patient_id: str, when: When, *, category: str = "laboratory", code: str = "2339-0",
                updated: When | None = None, security: tuple[str, ...] = ()) -> dict:
    return {
        "resourceType": "Observation", "id": fhir_id, "meta": meta(_updated(updated), *security), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": instant(when),
        "valueQuantity": {"value": 90, "unit": "mg/dL"},
    }


def condition(fhir_id: str, patient_id: str, onset: When, status: str, *, updated: When | None = None) -> dict:
    return {
        "resourceType": "Condition", "id": fhir_id, "meta": meta(_updated(updated)),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": status}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "onsetDateTime": instant(onset),
    }


def claim_eob(fhir_id: str, patient_id: str, service: When, *, updated: When | None = None,
              organization: str | None = None) -> dict:
    """A paid professional claim (with the amounts the export must remove) for a service on `service`."""
    served = instant(service)
    body: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit", "id": fhir_id, "meta": meta(_updated(updated)), "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{patient_id}"},
        "billablePeriod": {"start": served, "end": served}, "created": served,
        "insurer": {"display": "Old Plan"}, "provider": {"display": "Clinic"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Plan"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://snomed.info/sct",
                                                                  "code": "185349003"}]},
                  "servicedDate": served[:10], "unitPrice": {"value": 10.0, "currency": "USD"},
                  "net": {"value": 10.0, "currency": "USD"},
                  "adjudication": [{"category": {"coding": [{"code": "submitted"}]},
                                    "amount": {"value": 10.0, "currency": "USD"}}]}],
        "total": [{"category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 10.0, "currency": "USD"}}],
        "payment": {"amount": {"value": 8.0, "currency": "USD"}},
    }
    if organization:
        body["provider"] = {"reference": f"Organization/{organization}"}
    return body


PA_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization"
WHEN_ADJUDICATED = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-when-adjudicated"
REVIEW_ACTION = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewAction"
REVIEW_ACTION_CODE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewActionCode"
REVIEW_CODES = {"approved": "A1", "denied": "A3", "pending": "A4", "cancelled": "C", "partial": "A2"}


def prior_auth(fhir_id: str, patient_id: str, status: str, *, changed: When, period_end: When | None = None,
               drug: bool = False, documents: tuple[str, ...] = (), updated: When | None = None) -> dict:
    """A PDex prior authorization whose reviewAction says `status`, decided at `changed`, in force until
    `period_end` (no preAuthRefPeriod when None); a prescription-drug PA when `drug`."""
    decided = instant(changed)
    product = ({"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"} if drug
               else {"system": "http://www.ama-assn.org/go/cpt", "code": "99213"})
    body: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit", "id": fhir_id,
        "meta": {**meta(_updated(updated)), "profile": [PA_PROFILE]}, "status": "active", "use": "preauthorization",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "patient": {"reference": f"Patient/{patient_id}"}, "created": decided,
        "insurer": {"display": "Old Plan"}, "provider": {"display": "Clinic"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Plan"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [product]}, "adjudication": [{
            "extension": [
                {"url": REVIEW_ACTION, "extension": [{"url": REVIEW_ACTION_CODE, "valueCodeableConcept": {
                    "coding": [{"system": "https://codesystem.x12.org/005010/306", "code": REVIEW_CODES[status]}]}}]},
                {"url": WHEN_ADJUDICATED, "valueDateTime": decided}],
            "category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 300.0, "currency": "USD"}}]}],
        "total": [{"category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 300.0, "currency": "USD"}}],
    }
    if period_end is not None:
        body["preAuthRefPeriod"] = [{"start": decided, "end": instant(period_end)}]
    if documents:
        body["supportingInfo"] = [{
            "sequence": n + 1,
            "category": {"coding": [{"system": "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASSupportingInfoType",
                                     "code": "additionalInformation"}]},
            "valueReference": {"reference": f"DocumentReference/{doc}"}} for n, doc in enumerate(documents)]
    return body


def document(fhir_id: str, patient_id: str, when: When, *, updated: When | None = None) -> dict:
    return {
        "resourceType": "DocumentReference", "id": fhir_id, "meta": meta(_updated(updated)), "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "date": instant(when),
        "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
    }


def provenance(fhir_id: str, patient_id: str, targets: list[str], *, updated: When | None = None) -> dict:
    """An author Provenance of the member's data (store it with the member: it names no patient itself)."""
    recorded = _updated(updated)
    return {
        "resourceType": "Provenance", "id": fhir_id, "meta": meta(recorded),
        "target": [{"reference": t} for t in targets], "recorded": recorded,
        "agent": [{"who": {"reference": "Organization/org-near"}}],
    }


def shared(resource_type: str, fhir_id: str) -> dict:
    """A Practitioner or Organization, last updated long ago (the export never filters shared rows by date)."""
    body: dict[str, Any] = {"resourceType": resource_type, "id": fhir_id, "meta": meta(years_ago(6))}
    body["name"] = [{"family": "Smith"}] if resource_type == "Practitioner" else fhir_id
    return body


# --- consents --------------------------------------------------------------------------------------------------

POLICY_URIS = {"regular": REGULAR_POLICY_URI, "sensitive": SENSITIVE_POLICY_URI}


def current_period() -> dict[str, str]:
    """A consent period around today: began a month ago, ends in a year."""
    return {"start": day(days_ago(30)), "end": day(days_from_now(365))}


def expired_period() -> dict[str, str]:
    """A consent period that ended ten months ago."""
    return {"start": day(days_ago(400)), "end": day(days_ago(300))}


def agreement_signed() -> date:
    """The date of a partner's data-sharing agreement in force: signed a year ago, open-ended. Every partner the
    tests make has one (an export kick-off needs it); tests of the agreement rule take it away."""
    return days_ago(365).date()


def consent_resource(patient_id: str, recipient_npi: str, *, policy: str = "sensitive", start: When | None = None,
                     end: When | None = None) -> dict:
    """An HRex Consent of Patient/`patient_id`: we (settings.PAYER_NPI) may disclose to the plan with
    `recipient_npi` under `policy` ("sensitive" or "regular") from `start` to `end` — a month ago to a year
    from now unless given. What a new plan sends in $member-match and $bulk-member-match."""
    period = current_period()
    if start is not None:
        period["start"] = day(start)
    if end is not None:
        period["end"] = day(end)

    def actor(role: tuple[str, str], npi: str) -> dict:
        return {"role": {"coding": [{"system": role[0], "code": role[1]}]},
                "reference": {"identifier": {"system": NPI_SYSTEM, "value": npi}}}

    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "policy": [{"uri": POLICY_URIS[policy]}],
        "provision": {
            "type": "permit", "period": period,
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "disclose"}]}],
            "actor": [actor(SOURCE_ROLE, settings.PAYER_NPI), actor(RECIPIENT_ROLE, recipient_npi)],
        },
    }


def consent_for(member: Member, partner: Partner, *, policy: str = "sensitive", start: When | None = None,
                end: When | None = None, via: str = "member-match") -> Consent:
    """`member`'s consent for `partner`, recorded by the service as `via` ($member-match or
    $bulk-member-match) records it; the decision accepts it today unless `start`/`end` say otherwise."""
    resource = consent_resource(member.fhir_id, partner.npi, policy=policy, start=start, end=end)
    return record_consent(member, partner, resource, via=via)


# --- the spec's examples ------------------------------------------------------------------------------------

# Copies of the spec's example instances, kept with the tests (tests/fixtures/README.md).
EXAMPLES = FIXTURES / "examples"
# The examples' two plans: the old plan (us, the data holder) and the new plan asking for the data.
EXAMPLE_PAYER_NPI = "9876543210"
EXAMPLE_PARTNER_NPI = "0123456789"
EXAMPLE_PARTNER_NAME = "New Health Plan"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def example_members() -> dict[str, Member]:
    """Our records of the $bulk-member-match example's members 1, 2 and 4 (member 3's card is unknown here)."""
    rows = [("pat-1001", "DH10001235", "1234564321", "Person", ("Patricia", "Ann"), "1974-12-25", "female"),
            ("pat-2002", "DH10001236", "9876543789", "Smith", ("William", "John"), "1958-12-25", "male"),
            ("pat-4004", "DH10001237", "7777700000", "Noway", ("Janis", "Noelle"), "1956-12-25", "female")]
    return {fhir_id: make_member(fhir_id, member_number=number, subscriber_id=subscriber, family=family,
                                 given=given, birth_date=birth, gender=gender, umb=f"UMB-{fhir_id}")
            for fhir_id, number, subscriber, family, given, birth, gender in rows}


def bulk_match_request() -> dict:
    """The $bulk-member-match example with its consents moved around today: members 1–3 consent now, member 4's
    consent has expired (as in the example, whose own periods are calendar 2025 and 2026)."""
    body = example("bulk-member-match-request.json")
    for number, bundle in enumerate(body["parameter"], start=1):
        consent = next(p for p in bundle["part"] if p["name"] == "Consent")["resource"]
        consent["provision"]["period"] = expired_period() if number == 4 else current_period()
    return body


# --- members of the sample (sample/: 8 Synthea members, every resource type) ------------------------------

@lru_cache(maxsize=1)
def _sample_index() -> tuple[dict[str, list[tuple[dict, Extracted]]], dict[str, tuple[dict, Extracted]]]:
    """The sample parsed and extracted once per test run: {patient id: rows}, {Type/id: shared row}."""
    by_patient: dict[str, list[tuple[dict, Extracted]]] = {}
    shared_rows: dict[str, tuple[dict, Extracted]] = {}
    for path in sorted(SAMPLE.glob("*.ndjson.gz")):
        with gzip.open(path, "rt") as lines:
            for line in lines:
                resource = json.loads(line)
                columns = extract_configured(resource)
                if columns.patient_id is None:
                    shared_rows[f"{columns.resource_type}/{columns.fhir_id}"] = (resource, columns)
                else:
                    by_patient.setdefault(columns.patient_id, []).append((resource, columns))
    return by_patient, shared_rows


def load_sample_member(patient_id: str | None = None) -> Member:
    """Load one person of the sample (the first by id — 764 resources of 12 types, yearly visits from 1965 to
    2025 — unless `patient_id` says) and the shared resources their data references."""
    by_patient, shared_rows = _sample_index()
    if patient_id is None:
        patient_id = sorted(by_patient)[0]
    member = Member.objects.create(fhir_id=patient_id, umb=f"umb-{patient_id}", member_number=f"mb-{patient_id}")
    rows = [_row(resource, columns, member) for resource, columns in by_patient[patient_id]]
    wanted = {ref for row in rows for ref in row.refs}
    existing = set(Resource.objects.filter(member__isnull=True).values_list("resource_type", "fhir_id"))
    for ref in sorted(wanted):
        if ref in shared_rows and tuple(ref.split("/", 1)) not in existing:
            rows.append(_row(*shared_rows[ref], None))
    Resource.objects.bulk_create(rows, batch_size=1000)
    return member
