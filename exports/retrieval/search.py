"""Per-resource search `GET /fhir/{Type}?patient={id}` and read `GET /fhir/{Type}/{id}` (spec §6 method 1).

Search parameters become SQL through exports.typefilter (the `_typeFilter` table) and rows are selected
through exports.rules: a search can never see what an export of the same member would withhold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from exports import rules
from exports.params import parse_elements, parse_prefer
from exports.retrieval.everything import (
    DEFAULT_COUNT,
    Cursor,
    MemberAccess,
    Page,
    Row,
    count_rows,
    decode_cursor,
    link_url,
    member_access,
    page_rows,
    parse_count,
    readable_members,
    search_key,
    shared_rows,
    transmitter_for,
)
from exports.typefilter import SEARCH_PARAMS, all_of, condition_for
from pdex import audit
from pdex.extract import SHARED_TYPES, reference_target
from pdex.fhir import BadRequest, NotFound, outcome_issue, require_fhir_id
from pdex.models import Member, Resource

CONTROL_PARAMS = ("patient", "_count", "_page", "_include", "_revinclude", "_elements")
SEARCHABLE_TYPES = tuple(t for t in rules.EXPORT_TYPES if t in SEARCH_PARAMS)
# _include=Type:param → the shared types that param may point at.
INCLUDE_TARGETS: dict[str, tuple[str, ...]] = {
    "practitioner": ("Practitioner",),
    "participant": ("Practitioner", "PractitionerRole"),
    "performer": ("Practitioner", "PractitionerRole", "Organization"),
    "requester": ("Practitioner", "PractitionerRole", "Organization"),
    "provider": ("Practitioner", "PractitionerRole", "Organization"),
    "care-team": ("Practitioner", "PractitionerRole", "Organization"),
    "author": ("Practitioner", "PractitionerRole", "Organization"),
    "service-provider": ("Organization",),
    "insurer": ("Organization",),
    "payor": ("Organization",),
    "location": ("Location",),
    "medication": ("Medication",),
}
# The reference parameters each type offers for _include, as the SQL/JSON path of their references
# (the FHIR R4 search parameter expressions).
INCLUDE_PATHS: dict[str, dict[str, str]] = {
    "CarePlan": {"performer": "$.activity[*].detail.performer[*].reference"},
    "CareTeam": {"participant": "$.participant[*].member.reference"},
    "Claim": {"provider": "$.provider.reference", "care-team": "$.careTeam[*].provider.reference",
              "insurer": "$.insurer.reference"},
    "Coverage": {"payor": "$.payor[*].reference"},
    "DiagnosticReport": {"performer": "$.performer[*].reference"},
    "DocumentReference": {"author": "$.author[*].reference"},
    "Encounter": {"practitioner": "$.participant[*].individual.reference",
                  "participant": "$.participant[*].individual.reference",
                  "service-provider": "$.serviceProvider.reference",
                  "location": "$.location[*].location.reference"},
    "ExplanationOfBenefit": {"provider": "$.provider.reference", "care-team": "$.careTeam[*].provider.reference",
                             "insurer": "$.insurer.reference"},
    "Immunization": {"performer": "$.performer[*].actor.reference", "location": "$.location.reference"},
    "MedicationDispense": {"performer": "$.performer[*].actor.reference",
                           "medication": "$.medicationReference.reference"},
    "MedicationRequest": {"requester": "$.requester.reference", "medication": "$.medicationReference.reference"},
    "Observation": {"performer": "$.performer[*].reference"},
    "Procedure": {"performer": "$.performer[*].actor.reference", "location": "$.location.reference"},
}
INCLUDE_PARAMS: dict[str, tuple[str, ...]] = {t: tuple(paths) for t, paths in INCLUDE_PATHS.items()}
REVINCLUDE_PROVENANCE = "Provenance:target"


@dataclass(frozen=True)
class SearchParams:
    """A validated search on one type for one member."""

    resource_type: str
    patient_id: str
    conditions: rules.Fragment | None = None
    count: int = DEFAULT_COUNT
    page_token: str | None = None
    includes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (JSON path, target types) per _include
    revinclude_provenance: bool = False
    elements: tuple[str, ...] = ()  # _elements: the matches are subsets (included resources come whole)
    issues: tuple[dict[str, Any], ...] = ()
    query: Mapping[str, list[str]] = field(default_factory=dict)


def _include(resource_type: str, value: str) -> tuple[str, tuple[str, ...]]:
    """`Type:param[:Target]` → (the param's JSON path, the shared types it may include)."""
    source, _, rest = value.partition(":")
    name, _, target = rest.partition(":")
    offered = INCLUDE_PARAMS.get(resource_type, ())
    if source != resource_type or name not in offered:
        choices = ", ".join(f"{resource_type}:{n}" for n in offered) or "none"
        raise BadRequest(f"_include={value} is not supported (supported: {choices}).", code="not-supported")
    targets = INCLUDE_TARGETS[name]
    if target:
        if target not in targets:
            raise BadRequest(f"_include={value}: {name} does not point at {target}.", code="not-supported")
        targets = (target,)
    return INCLUDE_PATHS[resource_type][name], targets


def parse_search_params(resource_type: str, query: Mapping[str, list[str]], *, prefer: str | None = None,
                        patient_id: str | None = None) -> SearchParams:
    """Validate a search: unknown parameters → 400, or with `Prefer: handling=lenient` ignored and reported."""
    if resource_type not in SEARCHABLE_TYPES:
        raise NotFound(f"Search on {resource_type} is not supported by this server.")
    lenient = "handling=lenient" in parse_prefer(prefer)
    values = {name: list(v) for name, v in query.items()}
    issues: list[dict[str, Any]] = []
    supported = set(SEARCH_PARAMS[resource_type]) | set(CONTROL_PARAMS)
    for name in sorted(values):
        if name.partition(":")[0] not in supported:
            if not lenient:
                raise BadRequest(f"Search parameter '{name}' is not supported on {resource_type}.",
                                 code="not-supported")
            issues.append(outcome_issue("warning", "not-supported", f"Ignored search parameter '{name}'.",
                                        expression=[name]))
            del values[name]
    if patient_id is None:
        selector = "_id" if resource_type == "Patient" else "patient"
        chosen = values.get(selector) or values.get("patient") or []
        if len(chosen) != 1 or not chosen[0] or "," in chosen[0]:
            raise BadRequest(f"A search on {resource_type} needs exactly one '{selector}' (one member at a time).")
        patient_id = chosen[0].removeprefix("Patient/")
    for name in ("_count", "_page"):
        if len(values.get(name, [])) > 1:
            raise BadRequest(f"Parameter '{name}' may appear only once.")
    conditions = []
    for n, (name, raw_values) in enumerate(sorted(values.items())):
        if name in CONTROL_PARAMS:
            continue
        for m, raw in enumerate(raw_values):  # repeated parameters AND together
            conditions.append(condition_for(resource_type, name, raw, f"s{n}_{m}"))
    includes = tuple(_include(resource_type, value) for value in values.get("_include", []))
    elements, dropped = parse_elements((e.strip() for v in values.get("_elements", []) for e in v.split(",")
                                        if e.strip()), lenient=lenient)
    issues.extend(dropped)
    revinclude = values.get("_revinclude", [])
    if any(v != REVINCLUDE_PROVENANCE for v in revinclude):
        raise BadRequest(f"Only _revinclude={REVINCLUDE_PROVENANCE} is supported.", code="not-supported")
    return SearchParams(
        resource_type=resource_type, patient_id=patient_id,
        conditions=all_of(conditions) if conditions else None,
        count=parse_count(values["_count"][0]) if values.get("_count") else DEFAULT_COUNT,
        page_token=values["_page"][0] if values.get("_page") else None,
        includes=includes, revinclude_provenance=bool(revinclude), elements=elements, issues=tuple(issues),
        query={k: v for k, v in values.items() if k != "_page"},
    )


def search_context(access: MemberAccess, resource_type: str, *, request_time: datetime,
                   conditions: rules.Fragment | None = None) -> rules.ExportContext:
    filters = {resource_type: [conditions]} if conditions is not None else {}
    return rules.export_context(request_time=request_time, types=[resource_type], type_filters=filters,
                                regular_member_ids=access.regular_member_ids)


def provenance_rows(access: MemberAccess, references: list[str], *, request_time: datetime) -> list[Row]:
    """The member's stored Provenance, under the rules, whose target is one of `references`."""
    if not references:
        return []
    targets = rules.Fragment(
        "EXISTS (SELECT 1 FROM jsonb_array_elements({r}.body -> 'target') AS rev(target)"
        " WHERE rev.target ->> 'reference' = ANY(%(rev_targets)s))", {"rev_targets": references})
    context = search_context(access, "Provenance", request_time=request_time, conditions=targets)
    return page_rows([rules.keyed_query("Provenance", [access.member.pk], context)], after=0, limit=10_000)


def included_references(row_ids: list[int], includes: tuple[tuple[str, tuple[str, ...]], ...]) -> set[str]:
    """`Type/id` of the shared resources the rows point at through the _include parameters' paths."""
    found: set[str] = set()
    with connection.cursor() as cursor:
        for path, targets in includes:
            cursor.execute("SELECT DISTINCT ref #>> '{}' FROM pdex_resource r,"
                           " jsonb_path_query(r.body, %(path)s::jsonpath) AS ref WHERE r.id = ANY(%(ids)s::bigint[])",
                           {"path": path, "ids": row_ids})
            for (reference,) in cursor.fetchall():
                target = reference_target(reference)
                if target and target[0] in targets:
                    found.add(f"{target[0]}/{target[1]}")
    return found


def search_page(partner, params: SearchParams, *, path: str, request=None, now: datetime | None = None) -> Page:
    """One page of a per-resource search, with its _include / _revinclude rows."""
    access = member_access(partner, params.patient_id, request=request, action="search")
    cursor = decode_cursor(params.page_token, search_key(path, params.query))
    request_time = cursor.request_time if cursor else (now or timezone.now())
    context = search_context(access, params.resource_type, request_time=request_time, conditions=params.conditions)
    queries = [rules.keyed_query(params.resource_type, [access.member.pk], context)]
    rows = page_rows(queries, after=cursor.after if cursor else 0, limit=params.count + 1, elements=params.elements)
    matches = rows[:params.count]
    includes: list[Row] = []
    if params.includes and matches:
        includes += shared_rows(included_references([row.pk for row in matches], params.includes))
    generated: list[dict[str, Any]] = []
    total = cursor.total if cursor else count_rows(queries)
    if params.revinclude_provenance:
        includes += provenance_rows(access, [row.reference for row in matches], request_time=request_time)
        generated = transmitter_for(matches, request_time)
    return Page(
        total=total, matches=matches, includes=includes, generated=generated,
        self_url=link_url(path, params.query, cursor),
        next_url=link_url(path, params.query, Cursor(matches[-1].pk, request_time, total))
        if len(rows) > params.count else None,
        issues=list(params.issues),
    )


def _one(query: tuple[str, dict], fhir_id: str) -> str | None:
    """The line of the one row of `query` with this id, if the rules let it through."""
    sql, params = query
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT q.id FROM ({sql}) AS q WHERE q.fhir_id = %(read_id)s",  # noqa: S608
                       {**params, "read_id": fhir_id})
        found = cursor.fetchone()
        if found is None:
            return None
        cursor.execute(*rules.lines_query([found[0]]))
        return cursor.fetchone()[1]


def read_resource(partner, resource_type: str, fhir_id: str, *, request=None,
                  now: datetime | None = None) -> str:
    """`GET /fhir/{Type}/{id}` as JSON text, under the access rule and the export rules; else 404."""
    if resource_type not in rules.EXPORT_TYPES:
        raise NotFound(f"{resource_type} is not available from this server.")
    require_fhir_id(fhir_id, resource_type)
    missing = NotFound(f"{resource_type}/{fhir_id} is not known to this server or not available to this client.")
    stored = Resource.objects.filter(resource_type=resource_type, fhir_id=fhir_id).values("member_id").first()
    if stored is None:
        raise missing
    now = now or timezone.now()
    if resource_type in SHARED_TYPES:
        member_ids, regular = readable_members(partner, now=now)
        if not member_ids:
            raise missing
        context = rules.export_context(request_time=now, regular_member_ids=regular)
        body = _one(rules.keyed_query(resource_type, member_ids, context), fhir_id)
        if body is None:
            raise NotFound(missing.diagnostics, audit_reason="not referenced by data the client may read")
        audit.record("read", audit.SUCCESS, partner=partner, request=request, entity=f"{resource_type}/{fhir_id}")
    else:
        member = Member.objects.filter(pk=stored["member_id"]).first()
        if member is None:
            raise missing
        access = member_access(partner, member.fhir_id, request=request, action="read")
        context = search_context(access, resource_type, request_time=now)
        body = _one(rules.keyed_query(resource_type, [member.pk], context), fhir_id)
    if body is None:
        raise missing
    return body


def searchable_params(resource_type: str) -> Iterable[tuple[str, str]]:
    """(name, FHIR search type) of every parameter a search on this type accepts, for the CapabilityStatement."""
    kinds = {"date": "date", "last-updated": "date", "token": "token", "code": "token", "id": "token"}
    if resource_type != "Patient":
        yield "patient", "reference"
    for name, param in sorted(SEARCH_PARAMS[resource_type].items()):
        yield name, kinds[param.kind]
