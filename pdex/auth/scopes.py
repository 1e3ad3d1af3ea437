"""SMART scopes (v1 and v2) and the PDex/HRex operation scopes, parsed and compared.

Pure functions: a granted scope string in, a yes/no out. Both scope generations are accepted
(`system/*.read` ≡ `system/*.rs`), and the IG's misspelled operation scopes are folded into one form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MEMBER_MATCH = "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"
BULK_MEMBER_MATCH = "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch"
MATCH_GROUP_QUERY = "code=http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS|match"
MATCH_GROUP_EXPORT = f"system/Group.rs?{MATCH_GROUP_QUERY}"

# Spellings seen in the IGs (spec §9), each mapped to the form we keep.
ALIASES = {
    "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match": BULK_MEMBER_MATCH,
    "system.Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match":
        MATCH_GROUP_EXPORT,
}
OPERATION_SCOPES = {MEMBER_MATCH, BULK_MEMBER_MATCH}

# Every resource type of FHIR R4 (4.0.1), the version we serve: a SMART scope naming anything else names nothing
# (fhir.resources ships R4B, whose list differs, so the R4 list is written out here).
R4_RESOURCE_TYPES = frozenset({
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
    "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct", "BodyStructure", "Bundle",
    "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition", "Claim",
    "ClaimResponse", "ClinicalImpression", "CodeSystem", "Communication", "CommunicationRequest",
    "CompartmentDefinition", "Composition", "ConceptMap", "Condition", "Consent", "Contract", "Coverage",
    "CoverageEligibilityRequest", "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition",
    "DeviceMetric", "DeviceRequest", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest",
    "DocumentReference", "EffectEvidenceSynthesis", "Encounter", "Endpoint", "EnrollmentRequest",
    "EnrollmentResponse", "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable", "ExampleScenario",
    "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal", "GraphDefinition", "Group", "GuidanceResponse",
    "HealthcareService", "ImagingStudy", "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation",
    "ImplementationGuide", "InsurancePlan", "Invoice", "Library", "Linkage", "List", "Location", "Measure",
    "MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
    "MedicationKnowledge", "MedicationRequest", "MedicationStatement", "MedicinalProduct",
    "MedicinalProductAuthorization", "MedicinalProductContraindication", "MedicinalProductIndication",
    "MedicinalProductIngredient", "MedicinalProductInteraction", "MedicinalProductManufactured",
    "MedicinalProductPackaged", "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect",
    "MessageDefinition", "MessageHeader", "MolecularSequence", "NamingSystem", "NutritionOrder", "Observation",
    "ObservationDefinition", "OperationDefinition", "OperationOutcome", "Organization", "OrganizationAffiliation",
    "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation", "Person", "PlanDefinition", "Practitioner",
    "PractitionerRole", "Procedure", "Provenance", "Questionnaire", "QuestionnaireResponse", "RelatedPerson",
    "RequestGroup", "ResearchDefinition", "ResearchElementDefinition", "ResearchStudy", "ResearchSubject",
    "RiskAssessment", "RiskEvidenceSynthesis", "Schedule", "SearchParameter", "ServiceRequest", "Slot", "Specimen",
    "SpecimenDefinition", "StructureDefinition", "StructureMap", "Subscription", "Substance",
    "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial", "SubstanceSpecification", "SupplyDelivery", "SupplyRequest", "Task",
    "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet", "VerificationResult", "VisionPrescription",
})

_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(?:\?(.+))?$")


@dataclass(frozen=True)
class SmartScope:
    context: str
    resource_type: str
    permissions: frozenset[str]
    query: str | None = None

    def covers(self, other: SmartScope) -> bool:
        """True when everything `other` allows, this allows too."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
            and (self.query is None or self.query == other.query)
        )


# What discovery advertises: v2 and v1 spellings, and both spellings of the bulk operation scope.
SUPPORTED = (
    "system/*.rs", "system/*.read",
    "system/Patient.rs", "system/Patient.read", "system/Group.rs", "system/Group.read",
    "system/Coverage.rs", "system/ExplanationOfBenefit.rs",
    MEMBER_MATCH, BULK_MEMBER_MATCH, "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match",
    MATCH_GROUP_EXPORT,
)
_PERMISSION_ORDER = "cruds"


def normalize(scope: str) -> str:
    return ALIASES.get(scope, scope)


def parse(scope: str) -> SmartScope | None:
    """A SMART scope, or None for anything else (operation scopes, openid, malformed, no such resource type)."""
    match = _SCOPE.match(normalize(scope))
    if not match or not match.group(3) or not (match.group(2) == "*" or match.group(2) in R4_RESOURCE_TYPES):
        return None
    context, resource_type, permissions, query = match.groups()
    permissions = _V1_PERMISSIONS.get(permissions, permissions)
    return SmartScope(context, resource_type, frozenset(permissions), query)


def names_unknown_resource_type(scope: str) -> bool:
    """A SMART-shaped scope (`system/Foo.read`) whose resource type FHIR R4 does not have."""
    match = _SCOPE.match(normalize(scope))
    return bool(match and match.group(2) != "*" and match.group(2) not in R4_RESOURCE_TYPES)


def is_write(scope: str) -> bool:
    """A SMART scope that allows creating, updating or deleting (`system/*.write`, `system/Claim.cud`, …)."""
    parsed = parse(scope)
    return parsed is not None and bool(parsed.permissions & {"c", "u", "d"})


def read_part(scope: str) -> str | None:
    """What a scope allows of reading and searching, as a v2 scope (`system/*.*` → `system/*.rs`); None if
    nothing."""
    parsed = parse(scope)
    if parsed is None or not parsed.permissions & {"r", "s"}:
        return None
    return render(SmartScope(parsed.context, parsed.resource_type, parsed.permissions & {"r", "s"}, parsed.query))


def is_known(scope: str) -> bool:
    """A scope this server understands and could grant."""
    return normalize(scope) in OPERATION_SCOPES or parse(scope) is not None


def satisfies(granted: Iterable[str], required: str) -> bool:
    """True when some granted scope allows what `required` names."""
    required = normalize(required)
    granted = [normalize(s) for s in granted]
    if required in OPERATION_SCOPES:
        return required in granted
    needed = parse(required)
    if needed is None:
        return required in granted
    return any(have.covers(needed) for have in map(parse, granted) if have is not None)


def satisfies_all(granted: Iterable[str], requirements: Iterable[str | tuple[str, ...]]) -> bool:
    """Every requirement met; a tuple requirement is met by any one of its scopes."""
    granted = list(granted)
    for requirement in requirements:
        alternatives = (requirement,) if isinstance(requirement, str) else requirement
        if not any(satisfies(granted, alternative) for alternative in alternatives):
            return False
    return True


def render(scope: SmartScope) -> str:
    """The SMART v2 spelling of a parsed scope."""
    permissions = "".join(p for p in _PERMISSION_ORDER if p in scope.permissions)
    query = f"?{scope.query}" if scope.query else ""
    return f"{scope.context}/{scope.resource_type}.{permissions}{query}"


def intersect(a: SmartScope, b: SmartScope) -> SmartScope | None:
    """What both scopes allow, or None when they share nothing."""
    if a.context != b.context:
        return None
    if a.resource_type == "*":
        resource_type = b.resource_type
    elif b.resource_type in ("*", a.resource_type):
        resource_type = a.resource_type
    else:
        return None
    permissions = a.permissions & b.permissions
    if not permissions or (a.query and b.query and a.query != b.query):
        return None
    return SmartScope(a.context, resource_type, permissions, a.query or b.query)


def grant(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The scopes a token gets: requested ∩ allowed, in request order, without duplicates.

    A requested scope the partner's policy fully covers is granted as spelled (v1 or v2, either
    operation-scope spelling); one it covers only in part is narrowed to the overlap, written as v2;
    anything unknown or outside the policy is dropped.
    """
    allowed = [normalize(s) for s in allowed]
    allowed_parsed = [p for p in map(parse, allowed) if p is not None]
    granted: list[str] = []
    for scope in requested:
        if is_known(scope) and satisfies(allowed, scope):
            candidates = [scope]
        else:
            wanted = parse(scope)
            overlaps = (intersect(wanted, have) for have in allowed_parsed) if wanted else ()
            candidates = [render(overlap) for overlap in overlaps if overlap is not None]
        for candidate in candidates:
            if candidate not in granted:
                granted.append(candidate)
    return granted
