"""Reading a FHIR `Parameters` body: the one reader every operation uses ($member-match, $bulk-member-match,
the export kick-offs, $everything).

It checks what FHIR itself requires of the shape — a Parameters resource, each parameter an object with a
name and at most one value[x], parts read the same way — and hands back typed values; what a parameter
means is the operation's business. Operations differ in the status of a malformed body (HRex answers 422,
Bulk Data 400), so the caller names the error to raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pdex.fhir import BadRequest, FhirError


class Parameter(NamedTuple):
    """One `Parameters.parameter` (or part): its name, and its value[x], resource or parts.

    A NamedTuple rather than a frozen dataclass: a 10,000-member $bulk-member-match is 40,000 of these, and a
    frozen dataclass's __init__ (one object.__setattr__ per field) cost 0.1 s of the kick-off."""

    index: int
    name: str
    value_type: str | None  # e.g. "valueString"; None for a resource or parts
    value: Any
    resource: Mapping[str, Any] | None
    parts: tuple[Parameter, ...]
    raw: Mapping[str, Any]  # as submitted, for operations that keep it


def read_parameters(body: Any, *, invalid: type[FhirError] = BadRequest,
                    where: str = "Parameters.parameter") -> list[Parameter]:
    """The parameters of a Parameters body; `invalid` (a FhirError class) when the body is not one."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Parameters":
        raise BadRequest("The request body must be a FHIR Parameters resource.", code="structure")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise invalid(f"{where} must be a list.", code="structure")
    return read_parts(parameters, invalid=invalid, where=where)


def read_parts(items: Sequence[Any], *, invalid: type[FhirError] = BadRequest, where: str) -> list[Parameter]:
    """Parameters (or parts) from their JSON list."""
    found = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            raise invalid(f"{where}[{index}] has no name.", code="structure")
        value_keys = [key for key in item if key.startswith("value")]
        if len(value_keys) > 1:
            raise invalid(f"{where}[{index}] ('{item['name']}') has more than one value[x].", code="structure")
        parts = item.get("part", [])
        if not isinstance(parts, list):
            raise invalid(f"{where}[{index}].part must be a list.", code="structure")
        resource = item.get("resource")
        found.append(Parameter(
            index=index, name=item["name"], value_type=value_keys[0] if value_keys else None,
            value=item[value_keys[0]] if value_keys else None,
            resource=resource if isinstance(resource, Mapping) else None,
            parts=tuple(read_parts(parts, invalid=invalid, where=f"{where}[{index}].part")), raw=item))
    return found


def values_by_name(parameters: Sequence[Parameter], accepted: Mapping[str, tuple[str, ...]],
                   *, invalid: type[FhirError] = BadRequest) -> dict[str, list[Any]]:
    """name → the values given for it, each the content of one of the value[x] `accepted` for that name.

    A known name with another value[x] (or none) is `invalid`; an unknown name is kept with whatever value it
    carried (or None), for the operation to refuse or, under lenient handling, to report and ignore.
    """
    found: dict[str, list[Any]] = {}
    for parameter in parameters:
        allowed = accepted.get(parameter.name)
        if allowed is not None and parameter.value_type not in allowed:
            raise invalid(f"Parameter '{parameter.name}' needs one of {', '.join(allowed)}.", code="structure")
        found.setdefault(parameter.name, []).append(parameter.value)
    return found
