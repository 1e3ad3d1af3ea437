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


def normalize(scope: str) -> str:
    return ALIASES.get(scope, scope)


def parse(scope: str) -> SmartScope | None:
    """A SMART scope, or None for anything else (operation scopes, openid, malformed)."""
    match = _SCOPE.match(normalize(scope))
    if not match or not match.group(3):
        return None
    context, resource_type, permissions, query = match.groups()
    permissions = _V1_PERMISSIONS.get(permissions, permissions)
    return SmartScope(context, resource_type, frozenset(permissions), query)


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
