"""Reading $member-match and $bulk-member-match Parameters, in all three input generations (spec §1.6).

Structural problems raise FhirError (the whole request fails); profile problems of one member are listed
by `problems()` so a single match answers 422 and a bulk match files that member under NonMatchedMembers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matching import normalize
from pdex.extract import parse_fhir_date
from pdex.fhir import Unprocessable
from pdex.parameters import Parameter, read_parameters, read_parts

RESOURCE_PARTS = {"MemberPatient": "Patient", "CoverageToMatch": "Coverage", "CoverageToLink": "Coverage",
                  "Consent": "Consent"}
LEGACY_NAMES = {"OldCoverage": "CoverageToMatch", "NewCoverage": "CoverageToLink"}  # HRex 0.2.0


@dataclass(frozen=True)
class MatchRequest:
    """One member to match: the parts of a $member-match call or of one MemberBundle."""

    patient: Mapping[str, Any]
    coverage_to_match: Mapping[str, Any] | None
    coverage_to_link: Mapping[str, Any] | None = None
    consent: Mapping[str, Any] | None = None
    legacy: bool = False


def _parameters(body: Any) -> list[Parameter]:
    parameters = read_parameters(body, invalid=Unprocessable)
    if not parameters:
        raise Unprocessable("Parameters.parameter is missing or empty.", code="required")
    return parameters


def _collect(parts: Sequence[Parameter], *, where: str, closed: bool) -> tuple[dict[str, Mapping[str, Any]], bool]:
    """name → resource for the known parts; unknown names fail only when the slicing is closed."""
    found: dict[str, Mapping[str, Any]] = {}
    legacy = False
    for part in parts:
        raw_name = part.name
        name = LEGACY_NAMES.get(raw_name, raw_name)
        legacy = legacy or raw_name in LEGACY_NAMES
        if name not in RESOURCE_PARTS:
            if closed:
                raise Unprocessable(f"Unknown parameter '{raw_name}' (allowed: MemberPatient, CoverageToMatch, "
                                    "CoverageToLink, Consent).", code="structure")
            continue
        resource = part.resource
        if resource is None or not resource.get("resourceType"):
            raise Unprocessable(f"{where} '{raw_name}' must carry a resource.", code="structure")
        if resource["resourceType"] != RESOURCE_PARTS[name]:
            raise Unprocessable(f"{where} '{raw_name}' must be a {RESOURCE_PARTS[name]}, "
                                f"not {resource['resourceType']}.", code="structure")
        if name in found:
            raise Unprocessable(f"{where} '{raw_name}' appears more than once.", code="structure")
        found[name] = resource
    return found, legacy


def parse_member_match(body: Any) -> MatchRequest:
    """The single-member request; its slicing is closed (hrex-parameters-member-match-in)."""
    found, legacy = _collect(_parameters(body), where="Parameters.parameter", closed=True)
    for required in ("MemberPatient", "CoverageToMatch"):
        if required not in found:
            raise Unprocessable(f"Request Parameters do not conform to hrex-parameters-member-match-in: "
                                f"{required} is missing.", code="required")
    request = MatchRequest(patient=found["MemberPatient"], coverage_to_match=found["CoverageToMatch"],
                           coverage_to_link=found.get("CoverageToLink"), consent=found.get("Consent"),
                           legacy=legacy)
    issues = problems(request)
    if issues:
        raise Unprocessable("Request Parameters do not conform to hrex-parameters-member-match-in: "
                            + "; ".join(issues), code="invalid")
    return request


def parse_bulk(body: Any) -> list[dict[str, Any]]:
    """The MemberBundle parameters, each checked for structure only (members are judged one by one later)."""
    bundles = []
    for parameter in _parameters(body):
        if parameter.name != "MemberBundle":
            continue
        where = f"MemberBundle[{len(bundles)}]"
        if not parameter.parts:
            raise Unprocessable(f"{where} has no parts.", code="structure")
        found, _ = _collect(parameter.parts, where=where, closed=False)
        if "MemberPatient" not in found:
            raise Unprocessable(f"{where} has no MemberPatient.", code="required")
        bundles.append(dict(parameter.raw))
    if not bundles:
        raise Unprocessable("The request has no MemberBundle parameter "
                            "(pdex-parameters-multi-member-match-bundle-in).", code="required")
    return bundles


def request_from_bundle(bundle: Mapping[str, Any]) -> MatchRequest:
    """One stored MemberBundle (as submitted) read again, for the batch that matches it."""
    parts = read_parts(bundle.get("part") or [], invalid=Unprocessable, where="MemberBundle.part")
    found, legacy = _collect(parts, where="MemberBundle", closed=False)
    return MatchRequest(patient=found["MemberPatient"], coverage_to_match=found.get("CoverageToMatch"),
                        coverage_to_link=found.get("CoverageToLink"), consent=found.get("Consent"),
                        legacy=legacy)


def problems(request: MatchRequest) -> list[str]:
    """Where the member's parts break hrex-patient-demographics / hrex-coverage (what a matcher relies on)."""
    issues = []
    entry = normalize.official_name(request.patient)
    if not normalize.name(entry.get("family")):
        issues.append("MemberPatient.name.family is required")
    if not normalize.given_names(entry.get("given")):
        issues.append("MemberPatient.name.given is required")
    if parse_fhir_date(request.patient.get("birthDate")) is None:
        issues.append("MemberPatient.birthDate is required (YYYY-MM-DD)")
    coverage = request.coverage_to_match
    if coverage is None:
        issues.append("CoverageToMatch is missing")
    else:
        if not coverage.get("identifier") and not coverage.get("subscriberId"):
            issues.append("CoverageToMatch needs a member identifier or subscriberId (us-core-15)")
        if not coverage.get("payor"):
            issues.append("CoverageToMatch.payor is required")
    return issues
