"""FHIR search parameters of the exported types, turned into SQL over the resource store.

Serves `_typeFilter` in exports (Bulk Data 2.0.0, PDex 2.2.0 date-of-service filtering) and the
per-resource search of exports.retrieval.search: one table of what we support, one translation. Anything outside the
table is refused clearly (PDex 2.2.0: an unsupported `_typeFilter` SHALL be an error), or dropped with a
warning under `Prefer: handling=lenient`.

Fragments use `{r}` for the row alias; exports.rules substitutes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count
from typing import Any
from urllib.parse import parse_qsl, unquote

from exports.rules import EXPORT_TYPES, Fragment
from pdex.dates import date_range
from pdex.fhir import BadRequest, outcome_issue

DATE, LAST_UPDATED, TOKEN, CODE, ID = "date", "last-updated", "token", "code", "id"
_DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_QUERY_START = re.compile(r",(?=[A-Z][A-Za-z]+(?:\?|%3F))")
FORBIDDEN_IN_TYPE_FILTER = frozenset({"_include", "_revinclude", "_sort", "_count", "_elements", "_summary",
                                      "_total", "_contained", "_containedType"})


@dataclass(frozen=True)
class SearchParam:
    """One supported search parameter: how it maps onto the stored resource."""

    kind: str
    path: str = ""       # the element for TOKEN / CODE
    many: bool = False   # the element repeats (an array of CodeableConcept)


_COMMON = {"_id": SearchParam(ID), "_lastUpdated": SearchParam(LAST_UPDATED)}
_DATE = SearchParam(DATE)
SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    "AllergyIntolerance": {"clinical-status": SearchParam(TOKEN, "clinicalStatus"), "date": _DATE,
                           "code": SearchParam(TOKEN, "code")},
    "CarePlan": {"category": SearchParam(TOKEN, "category", True), "date": _DATE,
                 "status": SearchParam(CODE, "status")},
    "CareTeam": {"status": SearchParam(CODE, "status"), "date": _DATE},
    "Claim": {"status": SearchParam(CODE, "status"), "use": SearchParam(CODE, "use"), "created": _DATE,
              "service-date": _DATE},
    "ClaimResponse": {"status": SearchParam(CODE, "status"), "use": SearchParam(CODE, "use"), "created": _DATE,
                      "outcome": SearchParam(CODE, "outcome")},
    "Condition": {"clinical-status": SearchParam(TOKEN, "clinicalStatus"), "onset-date": _DATE,
                  "category": SearchParam(TOKEN, "category", True), "code": SearchParam(TOKEN, "code")},
    "Coverage": {"status": SearchParam(CODE, "status"), "type": SearchParam(TOKEN, "type")},
    "Device": {"status": SearchParam(CODE, "status"), "type": SearchParam(TOKEN, "type")},
    "DiagnosticReport": {"category": SearchParam(TOKEN, "category", True), "code": SearchParam(TOKEN, "code"),
                         "date": _DATE, "status": SearchParam(CODE, "status")},
    "DocumentReference": {"category": SearchParam(TOKEN, "category", True), "type": SearchParam(TOKEN, "type"),
                          "date": _DATE, "status": SearchParam(CODE, "status")},
    "Encounter": {"date": _DATE, "type": SearchParam(TOKEN, "type", True), "status": SearchParam(CODE, "status")},
    "ExplanationOfBenefit": {"service-date": _DATE, "type": SearchParam(TOKEN, "type"),
                             "status": SearchParam(CODE, "status"), "use": SearchParam(CODE, "use")},
    "Goal": {"lifecycle-status": SearchParam(CODE, "lifecycleStatus"), "target-date": _DATE},
    "ImagingStudy": {"started": _DATE, "status": SearchParam(CODE, "status")},
    "Immunization": {"date": _DATE, "status": SearchParam(CODE, "status"),
                     "vaccine-code": SearchParam(TOKEN, "vaccineCode")},
    "MedicationDispense": {"status": SearchParam(CODE, "status"), "whenhandedover": _DATE},
    "MedicationRequest": {"status": SearchParam(CODE, "status"), "intent": SearchParam(CODE, "intent"),
                          "authoredon": _DATE, "code": SearchParam(TOKEN, "medicationCodeableConcept")},
    "MedicationStatement": {"status": SearchParam(CODE, "status"), "effective": _DATE,
                            "code": SearchParam(TOKEN, "medicationCodeableConcept")},
    "Observation": {"category": SearchParam(TOKEN, "category", True), "code": SearchParam(TOKEN, "code"),
                    "date": _DATE, "status": SearchParam(CODE, "status")},
    "Patient": {},
    "Procedure": {"date": _DATE, "code": SearchParam(TOKEN, "code"), "status": SearchParam(CODE, "status")},
    "Provenance": {},
    "Task": {"status": SearchParam(CODE, "status"), "intent": SearchParam(CODE, "intent"),
             "authored-on": _DATE, "code": SearchParam(TOKEN, "code")},
}
for _params in SEARCH_PARAMS.values():
    _params.update(_COMMON)
assert set(SEARCH_PARAMS) <= set(EXPORT_TYPES)


def supported_params(resource_type: str) -> dict[str, SearchParam]:
    return SEARCH_PARAMS.get(resource_type, {})


# --- values ----------------------------------------------------------------------------------------

def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2].isalpha() and value[:2].islower():
        return value[:2], value[2:]
    return "eq", value


def _date_sql(name: str, columns: tuple[str, str], prefix: str, value: str, pname: str) -> Fragment:
    if prefix not in _DATE_PREFIXES:
        raise BadRequest(f"Date prefix '{prefix}' of {name} is not supported; use one of {', '.join(_DATE_PREFIXES)}.")
    low, high = date_range(value)
    start_col, end_col = columns
    latest = f"COALESCE({{r}}.{end_col}, {{r}}.{start_col})"
    earliest = f"COALESCE({{r}}.{start_col}, {{r}}.{end_col})"
    params = {f"{pname}_lo": low, f"{pname}_hi": high}
    sql = {
        "eq": f"{latest} >= %({pname}_lo)s AND {earliest} < %({pname}_hi)s",
        "ge": f"{latest} >= %({pname}_lo)s",
        "gt": f"{latest} >= %({pname}_hi)s",
        "le": f"{earliest} < %({pname}_hi)s",
        "lt": f"{earliest} < %({pname}_lo)s",
    }[prefix]
    return Fragment(sql, {k: v for k, v in params.items() if f"%({k})s" in sql})


def _token_document(param: SearchParam, value: str) -> str:
    if "|" in value:
        system, code = value.split("|", 1)
    else:
        system, code = "", value
    if not system and not code:
        raise BadRequest(f"Empty token for {param.path}.")
    coding: dict[str, str] = {}
    if system:
        coding["system"] = system
    if code:
        coding["code"] = code
    concept = {"coding": [coding]}
    return json.dumps({param.path: [concept] if param.many else concept})


def condition_for(resource_type: str, name: str, raw_value: str, pname: str) -> Fragment:
    """One `name=value` of a search on `resource_type` as SQL (comma = OR); BadRequest if unsupported."""
    base, _, modifier = name.partition(":")
    param = supported_params(resource_type).get(base)
    if param is None:
        known = ", ".join(sorted(supported_params(resource_type))) or "none"
        raise BadRequest(f"Search parameter '{base}' is not supported on {resource_type} (supported: {known}).")
    if modifier:
        raise BadRequest(f"Modifier ':{modifier}' on '{base}' is not supported.")
    values = [v for v in raw_value.split(",") if v != ""]
    if not values:
        raise BadRequest(f"Search parameter '{base}' has no value.")
    alternatives: list[Fragment] = []
    for n, value in enumerate(values):
        key = f"{pname}_{n}"
        if param.kind in (DATE, LAST_UPDATED):
            prefix, date = _split_prefix(value)
            columns = (("last_updated", "last_updated") if param.kind == LAST_UPDATED
                       else ("service_start", "service_end"))
            alternatives.append(_date_sql(base, columns, prefix, date, key))
        elif param.kind == TOKEN:
            alternatives.append(Fragment(f"{{r}}.body @> %({key})s::jsonb", {key: _token_document(param, value)}))
        elif param.kind == CODE:
            alternatives.append(Fragment(f"{{r}}.body ->> '{param.path}' = %({key})s", {key: value}))
        else:
            alternatives.append(Fragment(f"{{r}}.fhir_id = %({key})s", {key: value}))
    return _any(alternatives)


def _any(fragments: list[Fragment]) -> Fragment:
    if len(fragments) == 1:
        return fragments[0]
    params: dict[str, Any] = {}
    for fragment in fragments:
        params.update(fragment.params)
    return Fragment("(" + " OR ".join(f"({f.sql})" for f in fragments) + ")", params)


def all_of(fragments: list[Fragment]) -> Fragment:
    """AND of fragments (the parameters of one query)."""
    if not fragments:
        return Fragment("TRUE")
    params: dict[str, Any] = {}
    for fragment in fragments:
        params.update(fragment.params)
    return Fragment(" AND ".join(f"({f.sql})" for f in fragments), params)


# --- _typeFilter -----------------------------------------------------------------------------------

def split_type_filters(values: Iterable[str]) -> list[str]:
    """The queries of one or more `_typeFilter` values: comma lists, where a comma starts a new query only
    before `Type?` (a comma inside a query's value means OR)."""
    queries: list[str] = []
    for value in values:
        queries += [q for q in _QUERY_START.split(value) if q]
    return queries


def parse_type_filter(query: str, pname: str) -> tuple[str, Fragment]:
    """`Type?param=value&…` → (type, the AND of its conditions)."""
    if "?" not in query:
        query = unquote(query)
    resource_type, mark, search = query.partition("?")
    if not mark or not search:
        raise BadRequest(f"_typeFilter '{query}' is not of the form Type?search-parameters.")
    if resource_type not in SEARCH_PARAMS:
        raise BadRequest(f"_typeFilter on {resource_type} is not supported.")
    conditions = []
    for n, (name, value) in enumerate(parse_qsl(search, keep_blank_values=True, strict_parsing=False)):
        if name.partition(":")[0] in FORBIDDEN_IN_TYPE_FILTER:
            raise BadRequest(f"'{name}' may not be used inside _typeFilter.")
        conditions.append(condition_for(resource_type, name, value, f"{pname}_{n}"))
    if not conditions:
        raise BadRequest(f"_typeFilter '{query}' has no search parameters.")
    return resource_type, all_of(conditions)


def parse_type_filters(values: Iterable[str], *, types: Iterable[str] | None = None,
                       lenient: bool = False) -> tuple[dict[str, list[Fragment]], list[dict[str, Any]]]:
    """All `_typeFilter` values → ({type: alternatives}, warnings). Unsupported queries raise BadRequest,
    or under lenient handling are dropped with a warning issue (for the export's error file)."""
    wanted = set(types) if types else None
    filters: dict[str, list[Fragment]] = {}
    warnings: list[dict[str, Any]] = []
    counter = count()
    for query in split_type_filters(values):
        try:
            resource_type, fragment = parse_type_filter(query, f"tf{next(counter)}")
            if wanted is not None and resource_type not in wanted:
                raise BadRequest(f"_typeFilter on {resource_type}, which is not among the requested _type.")
        except BadRequest as error:
            if not lenient:
                raise
            warnings.append(outcome_issue("warning", "not-supported", f"Ignored: {error.diagnostics}",
                                          expression=["_typeFilter"]))
            continue
        filters.setdefault(resource_type, []).append(fragment)
    return filters, warnings


def type_filters(queries: Iterable[str], *, types: Iterable[str] | None = None) -> dict[str, list[Fragment]]:
    """The stored (already validated) `_typeFilter` queries of a job as the rules' {type: alternatives}."""
    return parse_type_filters(queries, types=types)[0]
