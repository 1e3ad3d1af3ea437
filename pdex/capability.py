"""The CapabilityStatement, built from what the apps register, so /metadata lists only what exists.

Each app registers its interactions, search parameters and operations in its AppConfig.ready().
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.conf import settings

_interactions: dict[str, list[str]] = defaultdict(list)
_search_params: dict[str, list[dict[str, str]]] = defaultdict(list)
_operations: dict[str, list[dict[str, str]]] = defaultdict(list)
_system_operations: list[dict[str, str]] = []
_profiles: dict[str, list[str]] = defaultdict(list)
_instantiates: list[str] = []
_security_hooks: list = []
_search_includes: dict[str, list[str]] = defaultdict(list)
_search_revincludes: dict[str, list[str]] = defaultdict(list)


def register_interactions(resource_type: str, *codes: str) -> None:
    for code in codes:
        if code not in _interactions[resource_type]:
            _interactions[resource_type].append(code)


def register_search_param(resource_type: str, name: str, type_: str, definition: str = "") -> None:
    entry = {"name": name, "type": type_}
    if definition:
        entry["definition"] = definition
    if entry not in _search_params[resource_type]:
        _search_params[resource_type].append(entry)


def register_search_includes(resource_type: str, *includes: str, reverse: bool = False) -> None:
    """`searchInclude` (or, with reverse=True, `searchRevInclude`) values, e.g. "Provenance:target"."""
    target = (_search_revincludes if reverse else _search_includes)[resource_type]
    for include in includes:
        if include not in target:
            target.append(include)


def register_operation(resource_type: str | None, name: str, definition: str) -> None:
    entry = {"name": name, "definition": definition}
    target = _system_operations if resource_type is None else _operations[resource_type]
    if entry not in target:
        target.append(entry)


def register_profiles(resource_type: str, *profiles: str) -> None:
    for profile in profiles:
        if profile not in _profiles[resource_type]:
            _profiles[resource_type].append(profile)


def register_instantiates(canonical: str) -> None:
    if canonical not in _instantiates:
        _instantiates.append(canonical)


def register_security(hook) -> None:
    """`hook()` returns the `rest.security` element (the authorization app provides it)."""
    _security_hooks.append(hook)


def capability_statement() -> dict[str, Any]:
    resource_types = sorted(set(_interactions) | set(_search_params) | set(_operations))
    resources = []
    for resource_type in resource_types:
        entry: dict[str, Any] = {"type": resource_type}
        if _profiles.get(resource_type):
            entry["supportedProfile"] = _profiles[resource_type]
        if _interactions.get(resource_type):
            entry["interaction"] = [{"code": code} for code in _interactions[resource_type]]
        if _search_includes.get(resource_type):
            entry["searchInclude"] = _search_includes[resource_type]
        if _search_revincludes.get(resource_type):
            entry["searchRevInclude"] = _search_revincludes[resource_type]
        if _search_params.get(resource_type):
            entry["searchParam"] = _search_params[resource_type]
        if _operations.get(resource_type):
            entry["operation"] = _operations[resource_type]
        resources.append(entry)
    rest: dict[str, Any] = {"mode": "server", "resource": resources}
    if _system_operations:
        rest["operation"] = _system_operations
    for hook in _security_hooks:
        rest["security"] = hook()
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": settings.PAYER_NAME,
        "kind": "instance",
        "software": {"name": "pdex-p2p", "version": "0.1.0"},
        "implementation": {"description": f"{settings.PAYER_NAME} payer-to-payer FHIR API",
                           "url": settings.FHIR_BASE_URL},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }
    if _instantiates:
        statement["instantiates"] = list(_instantiates)
    return statement
