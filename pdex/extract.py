"""Columns extracted from a FHIR resource at ingest: pure functions over the resource's JSON.

The export rules filter on these columns in SQL instead of reading JSON, so the rules here decide what
"date of service", "sensitive" and "prior-authorization status" mean. docs/data-store.md states every
rule per resource type; the tests pin them on real resources.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

SHARED_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "Medication"})
# Where each member-owned type points at its member, in the order we look.
MEMBER_FIELDS = ("patient", "subject", "beneficiary", "for")  # `for`: a Task's beneficiary
# Undated resources without meta.lastUpdated: "unchanged since the epoch", so no incremental export
# picks them up unless they change (docs/data-store.md).
UNDATED_LAST_UPDATED = datetime(1970, 1, 1, tzinfo=UTC)

PA_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization"
REVIEW_ACTION_URL = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewAction"
REVIEW_ACTION_CODE_URL = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewActionCode"
# The same decision as Da Vinci PAS records it on a ClaimResponse.
PAS_REVIEW_ACTION_URL = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewAction"
PAS_REVIEW_ACTION_CODE_URL = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewActionCode"
# Types that record a prior authorization when `use` = preauthorization: the PDex PA EOB, and PAS's request
# (Claim) and decision (ClaimResponse). One PA rule applies to all three (exports.rules).
PA_TYPES = frozenset({"ExplanationOfBenefit", "Claim", "ClaimResponse"})
# PDex ProvenancePayerDataSource: what a payer's FHIR record was made from (loaders may say; exports name it in
# the transmitter Provenance's entity, extension ProvenanceSourceFrom).
PAYER_DATA_SOURCE = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/ProvenancePayerDataSource"
SOURCE_FORMATS = {
    "hl7v2other": "HL7 v2", "hl7v2oru": "HL7 v2 ORU", "hl7v2adt": "HL7 v2 ADT", "hl7v2r01": "HL7 v2 R01",
    "hl7v2rsp": "HL7 v2 RSP", "hl7v2orm": "HL7 v2 ORM", "hl7v2mdm": "HL7 v2 MDM", "hl7v2vxu": "HL7 v2 VXU",
    "hl7v3": "HL7 v3", "hl7ccda": "HL7 C-CDA", "hl7cda": "HL7 CDA", "hl7cdaqrda": "HL7 CDA QRDA",
    "hl7fhirdstu2": "FHIR DSTU2", "hl7fhirdstu3": "FHIR STU3", "hl7fhirr4": "FHIR R4", "x12837": "837 claim",
    "x12278": "278", "x12275": "275", "x12other": "X12", "ncpdp": "NCPDP", "capture": "Direct Capture",
    "customtx": "Trading Partner Format", "image": "Image", "other": "Other",
}
WHEN_ADJUDICATED_URL = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-when-adjudicated"
# X12 306 action codes (PAS reviewAction) → our PA status.
REVIEW_ACTION_STATUS = {
    "A1": "approved",   # certified in total
    "A2": "partial",    # certified, partial
    "A3": "denied",     # not certified
    "A4": "pending",    # pended
    "A6": "partial",    # modified
    "C": "cancelled",   # cancelled
    "CT": "pending",    # contact payer
    "NA": "approved",   # no action required
}
OUTCOME_STATUS = {"queued": "pending", "complete": "approved", "partial": "partial", "error": "denied"}
DRUG_SYSTEMS = ("http://www.nlm.nih.gov/research/umls/rxnorm", "http://hl7.org/fhir/sid/ndc")

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


@dataclass(frozen=True)
class Extracted:
    """The columns of pdex.models.Resource that come from the resource itself."""

    resource_type: str
    fhir_id: str
    patient_id: str | None
    last_updated: datetime
    last_updated_from_meta: bool
    service_start: datetime | None
    service_end: datetime | None
    sensitive: bool
    clinical_status: str = ""
    eob_use: str = ""
    pa_status: str = ""
    pa_status_changed: datetime | None = None
    pa_period_end: datetime | None = None
    pa_drug: bool = False
    refs: list[str] = field(default_factory=list)


# --- small parsers ---------------------------------------------------------------------------------

def parse_fhir_date(value: Any) -> date | None:
    """The calendar date of a full FHIR date or dateTime; None for partial dates (a year is no birth date)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def parse_fhir_datetime(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime; partial dates take their first instant (UTC)."""
    if not isinstance(value, str) or not value:
        return None
    match = _PARTIAL_DATE.match(value)
    if match:
        year, month, day = match.groups()
        return datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def reference_target(reference: Any) -> tuple[str | None, str] | None:
    """(type, id) of a reference string: `Type/id`, `…/Type/id/_history/n`, or `urn:uuid:id` (type unknown)."""
    if not isinstance(reference, str) or not reference or reference.startswith("#"):
        return None
    if reference.startswith("urn:uuid:"):
        return None, reference[len("urn:uuid:"):]
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2], parts[-1]
    return None


def member_reference(resource: dict) -> str | None:
    """The Patient id a resource belongs to: Patient itself, else patient / subject / beneficiary / for.

    `urn:uuid:x` resolves to `x`: Synthea (and most transaction bundles) use the Patient's id as its uuid.
    """
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for name in MEMBER_FIELDS:
        value = resource.get(name)
        target = reference_target(value.get("reference")) if isinstance(value, dict) else None
        if target and target[0] in (None, "Patient"):
            return target[1]
    return None


def normalize_name(value: str) -> str:
    """Casefolded, accents and punctuation removed, spaces collapsed: what matching compares."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    letters = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    cleaned = re.sub(r"[^\w\s]", " ", letters.casefold()).replace("_", " ")
    return " ".join(cleaned.split())


# --- date of service -------------------------------------------------------------------------------

def _period(value: Any) -> tuple[datetime | None, datetime | None]:
    if not isinstance(value, dict):
        return None, None
    return parse_fhir_datetime(value.get("start")), parse_fhir_datetime(value.get("end"))


def _choice(resource: dict, stem: str) -> tuple[datetime | None, datetime | None]:
    """A `stem[x]` element as (start, end): dateTime/instant/date give start = end; Period gives its bounds."""
    for suffix in ("DateTime", "Instant", "Date"):
        moment = parse_fhir_datetime(resource.get(stem + suffix))
        if moment:
            return moment, moment
    return _period(resource.get(stem + "Period"))


def _moment(value: Any) -> tuple[datetime | None, datetime | None]:
    moment = parse_fhir_datetime(value)
    return moment, moment


def _first(*candidates: tuple[datetime | None, datetime | None]) -> tuple[datetime | None, datetime | None]:
    for start, end in candidates:
        if start or end:
            return start, end
    return None, None


def _items_served(resource: dict) -> tuple[datetime | None, datetime | None]:
    """The span of item.servicedDate / item.servicedPeriod over all items."""
    moments: list[datetime] = []
    for item in resource.get("item") or []:
        start, end = _choice(item, "serviced")
        moments += [m for m in (start, end) if m]
    return (min(moments), max(moments)) if moments else (None, None)


def service_period(resource: dict) -> tuple[datetime | None, datetime | None]:
    """Date of service (start, end) by the per-type rule in docs/data-store.md; (None, None) if none applies."""
    kind = resource.get("resourceType")
    if kind == "Encounter":
        return _period(resource.get("period"))
    if kind in ("ExplanationOfBenefit", "Claim"):
        return _first(_period(resource.get("billablePeriod")), _items_served(resource))
    if kind == "ClaimResponse":
        return _moment(resource.get("created"))
    if kind == "Task":
        return _first(_period(resource.get("executionPeriod")), _moment(resource.get("authoredOn")))
    if kind == "MedicationStatement":
        return _first(_choice(resource, "effective"), _moment(resource.get("dateAsserted")))
    if kind in ("Observation", "DiagnosticReport"):
        return _first(_choice(resource, "effective"), _moment(resource.get("issued")))
    if kind == "Procedure":
        return _choice(resource, "performed")
    if kind == "Immunization":
        return _choice(resource, "occurrence")
    if kind in ("Condition", "AllergyIntolerance"):
        return _first(_choice(resource, "onset"), _moment(resource.get("recordedDate")))
    if kind == "MedicationRequest":
        return _moment(resource.get("authoredOn"))
    if kind == "MedicationDispense":
        return _first(_moment(resource.get("whenHandedOver")), _moment(resource.get("whenPrepared")))
    if kind == "ImagingStudy":
        return _moment(resource.get("started"))
    if kind in ("CarePlan", "CareTeam", "Coverage"):
        return _period(resource.get("period"))
    if kind == "DocumentReference":
        context = resource.get("context") or {}
        return _first(_period(context.get("period")), _moment(resource.get("date")))
    if kind == "Goal":
        return _moment(resource.get("startDate"))
    if kind == "Provenance":
        return _first(_period(resource.get("occurredPeriod")), _moment(resource.get("occurredDateTime")),
                      _moment(resource.get("recorded")))
    return None, None


def record_date(resource: dict, service: tuple[datetime | None, datetime | None]) -> datetime | None:
    """When the record was written, for resources without meta.lastUpdated (never in the future of its data)."""
    for name in ("created", "issued", "recordedDate", "recorded", "authoredOn", "date", "dateAsserted"):
        moment = parse_fhir_datetime(resource.get(name))
        if moment:
            return moment
    if resource.get("resourceType") == "Immunization":
        return service[0]
    return service[1] or service[0]


def last_updated(resource: dict, service: tuple[datetime | None, datetime | None]) -> tuple[datetime, bool]:
    """meta.lastUpdated, else the record date, else UNDATED_LAST_UPDATED; and whether meta supplied it."""
    meta = parse_fhir_datetime((resource.get("meta") or {}).get("lastUpdated"))
    if meta:
        return meta, True
    return record_date(resource, service) or UNDATED_LAST_UPDATED, False


# --- sensitivity ----------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def load_sensitive_codes(path: str) -> tuple[frozenset[tuple[str, str]], tuple[tuple[str, str], ...]]:
    """(exact (system, code) pairs, (system, prefix) pairs) from the configurable code list."""
    spec = json.loads(Path(path).read_text())
    exact = frozenset((entry["system"], entry["code"]) for entry in spec.get("codes", []))
    prefixes = tuple((entry["system"], entry["prefix"]) for entry in spec.get("prefixes", []))
    return exact, prefixes


def _codings(node: Any):
    """Every coding (system, code) anywhere below node."""
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and isinstance(code, str):
            yield system, code
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codings(value)


def is_sensitive(resource: dict, *, security_codes: frozenset[str] | set[str], codes_file: str) -> bool:
    """A sensitivity label in meta.security, or any clinical coding on the configured code list."""
    for label in (resource.get("meta") or {}).get("security") or []:
        if isinstance(label, dict) and label.get("code") in security_codes:
            return True
    exact, prefixes = load_sensitive_codes(codes_file)
    body = {key: value for key, value in resource.items() if key not in ("meta", "text")}
    for system, code in _codings(body):
        if (system, code) in exact:
            return True
        if any(system == p_system and code.startswith(prefix) for p_system, prefix in prefixes):
            return True
    return False


# --- prior authorizations -------------------------------------------------------------------------

def is_prior_authorization(resource: dict) -> bool:
    """A PDex PA EOB, or a PAS Claim / ClaimResponse: `use` = preauthorization."""
    return resource.get("resourceType") in PA_TYPES and resource.get("use") == "preauthorization"


def _adjudications(resource: dict) -> list[dict]:
    found = list(resource.get("adjudication") or [])
    for item in resource.get("item") or []:
        found += item.get("adjudication") or []
        for detail in item.get("detail") or []:
            found += detail.get("adjudication") or []
    return [a for a in found if isinstance(a, dict)]


def _review_action_codes(adjudication: dict) -> list[str]:
    codes = []
    for ext in adjudication.get("extension") or []:
        if ext.get("url") not in (REVIEW_ACTION_URL, PAS_REVIEW_ACTION_URL):
            continue
        for sub in ext.get("extension") or []:
            if sub.get("url") in (REVIEW_ACTION_CODE_URL, PAS_REVIEW_ACTION_CODE_URL, "code"):
                codes += [c.get("code") for c in (sub.get("valueCodeableConcept") or {}).get("coding") or []]
    return [c for c in codes if c]


def _combine(statuses: list[str]) -> str:
    """One status for several items: pending wins, then all-equal, then a mix of approved/denied = partial."""
    unique = set(statuses)
    if "pending" in unique:
        return "pending"
    if len(unique) == 1:
        return statuses[0]
    unique.discard("cancelled")
    if len(unique) == 1:
        return unique.pop()
    return "partial"


def pa_status(resource: dict) -> str:
    """approved / partial / pending / denied / cancelled, from status, reviewAction, denial reasons, outcome."""
    if resource.get("status") in ("cancelled", "entered-in-error"):
        return "cancelled"
    adjudications = _adjudications(resource)
    decided = [REVIEW_ACTION_STATUS[c] for a in adjudications for c in _review_action_codes(a)
               if c in REVIEW_ACTION_STATUS]
    if decided:
        return _combine(decided)
    for adjudication in adjudications:
        categories = (adjudication.get("category") or {}).get("coding") or []
        if any(c.get("code") == "denialreason" for c in categories):
            return "denied"
    return OUTCOME_STATUS.get(resource.get("outcome", ""), "pending")


def pa_status_changed(resource: dict) -> datetime | None:
    """The latest adjudication time (base-ext-when-adjudicated), else `created`: when the decision last moved."""
    moments = [parse_fhir_datetime(ext.get("valueDateTime"))
               for adjudication in _adjudications(resource)
               for ext in adjudication.get("extension") or [] if ext.get("url") == WHEN_ADJUDICATED_URL]
    moments = [m for m in moments if m]
    return max(moments) if moments else parse_fhir_datetime(resource.get("created"))


def pa_period_end(resource: dict) -> datetime | None:
    """The latest end of preAuthRefPeriod (EOB) or preAuthPeriod (ClaimResponse): the end of the authorization's
    validity."""
    periods = [*(resource.get("preAuthRefPeriod") or []), resource.get("preAuthPeriod")]
    ends = [_period(p)[1] for p in periods if p]
    ends = [e for e in ends if e]
    return max(ends) if ends else None


def is_drug_pa(resource: dict) -> bool:
    """A pharmacy claim type, or an item coded in RxNorm/NDC: a prescription-drug PA."""
    for coding in (resource.get("type") or {}).get("coding") or []:
        if coding.get("code") == "pharmacy":
            return True
    for item in resource.get("item") or []:
        for coding in (item.get("productOrService") or {}).get("coding") or []:
            if coding.get("system") in DRUG_SYSTEMS:
                return True
    return False


# --- references to shared resources ---------------------------------------------------------------

def _references(node: Any):
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str):
            yield reference
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def shared_refs(resource: dict) -> list[str]:
    """Sorted `Type/id` of every Organization/Practitioner/PractitionerRole/Location/Medication referenced."""
    found = set()
    for reference in _references({k: v for k, v in resource.items() if k != "contained"}):
        target = reference_target(reference)
        if target and target[0] in SHARED_TYPES:
            found.add(f"{target[0]}/{target[1]}")
    for contained in resource.get("contained") or []:
        for reference in _references(contained):
            target = reference_target(reference)
            if target and target[0] in SHARED_TYPES:
                found.add(f"{target[0]}/{target[1]}")
    return sorted(found)


def clinical_status(resource: dict) -> str:
    if resource.get("resourceType") not in ("Condition", "AllergyIntolerance"):
        return ""
    codings = (resource.get("clinicalStatus") or {}).get("coding") or []
    return next((c.get("code") for c in codings if c.get("code")), "")


# --- everything at once ---------------------------------------------------------------------------

def extract(resource: dict, *, security_codes: frozenset[str] | set[str], codes_file: str) -> Extracted:
    """All extracted columns of one resource."""
    kind = resource["resourceType"]
    service = service_period(resource)
    updated, from_meta = last_updated(resource, service)
    prior_auth = is_prior_authorization(resource)
    return Extracted(
        resource_type=kind,
        fhir_id=resource["id"],
        patient_id=None if kind in SHARED_TYPES else member_reference(resource),
        last_updated=updated,
        last_updated_from_meta=from_meta,
        service_start=service[0],
        service_end=service[1],
        sensitive=is_sensitive(resource, security_codes=security_codes, codes_file=codes_file),
        clinical_status=clinical_status(resource),
        eob_use=str(resource.get("use") or "")[:32] if kind in PA_TYPES else "",
        pa_status=pa_status(resource) if prior_auth else "",
        pa_status_changed=pa_status_changed(resource) if prior_auth else None,
        pa_period_end=pa_period_end(resource) if prior_auth else None,
        pa_drug=is_drug_pa(resource) if prior_auth else False,
        refs=shared_refs(resource),
    )


def extract_configured(resource: dict) -> Extracted:
    """extract() with the security codes and code list from settings."""
    return extract(resource, security_codes=frozenset(settings.SENSITIVE_SECURITY_CODES),
                   codes_file=str(settings.SENSITIVE_CODES_FILE))


def absolute_binary_urls(resource: dict, base_url: str) -> dict:
    """A DocumentReference's relative `Binary/{id}` attachment URLs made absolute under our FHIR base, so the
    exported resource points where the partner downloads it with its token (Bulk Data: absolute URLs)."""
    if resource.get("resourceType") != "DocumentReference":
        return resource
    for content in resource.get("content") or []:
        attachment = content.get("attachment") if isinstance(content, dict) else None
        url = attachment.get("url") if isinstance(attachment, dict) else None
        if isinstance(url, str) and url.startswith("Binary/"):
            attachment["url"] = f"{base_url.rstrip('/')}/{url}"
    return resource


def format_instant(moment: datetime) -> str:
    """An instant as FHIR writes it (UTC, seconds precision unless there are microseconds)."""
    moment = moment.astimezone(UTC)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")

