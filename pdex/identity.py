"""Who a member is at this plan, taken from the payer's own Coverage: member number and subscriber id.

A member's card carries the member id (the Coverage identifier typed v2-0203#MB) and the subscriber id
(`Coverage.subscriberId`). Ingest copies them from the member's Coverage with us onto the Member row, where
`$member-match` looks people up, and re-makes that choice on every load that brings the member's Coverage or
Patient (docs/data-store.md, "Member identity"). "With us" means the Coverage's payor names us — the same
test `$member-match` applies to a CoverageToMatch, written once in Python (`payor_names_us`, for requests)
and once in SQL (`_PAYOR_NAMES_US`, for the store); tests/test_member_identity.py holds the two to the same
cases.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
MB = (IDENTIFIER_TYPE_SYSTEM, "MB")
# Member's columns are this wide; a longer value cannot be one of our card numbers and is not copied.
IDENTIFIER_MAX_LENGTH = 64


@dataclass(frozen=True)
class OurIdentity:
    """How other plans and our own data name us: our NPI, our Organization's id, our member id system."""

    npi: str
    organization_id: str
    member_id_system: str


def our_identity() -> OurIdentity:
    return OurIdentity(npi=settings.PAYER_NPI, organization_id=settings.PAYER_ORGANIZATION_ID,
                       member_id_system=settings.MEMBER_ID_SYSTEM)


def is_typed(identifier: Mapping[str, Any], code: tuple[str, str]) -> bool:
    """The identifier's type has the coding (system, code)."""
    concept = identifier.get("type")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return any(isinstance(c, dict) and (c.get("system"), c.get("code")) == code for c in codings or [])


def _names_our_organization(reference: str, organization_id: str) -> bool:
    reference = reference.rstrip("/")
    ours = f"Organization/{organization_id}"
    return reference == ours or reference.endswith(f"/{ours}")


def payor_names_us(coverage: Mapping[str, Any], ours: OurIdentity) -> bool:
    """Some payor of the Coverage is us: an identifier with our NPI, a contained Organization (`#id`, as HRex
    0.2.0 requests do) carrying it, or a reference to our Organization (relative or absolute)."""
    contained = {c.get("id"): c for c in coverage.get("contained") or [] if isinstance(c, dict)}
    for payor in coverage.get("payor") or []:
        if not isinstance(payor, dict):
            continue
        identifiers = [payor["identifier"]] if isinstance(payor.get("identifier"), dict) else []
        literal = payor.get("reference") if isinstance(payor.get("reference"), str) else ""
        if literal.startswith("#"):
            identifiers += [i for i in (contained.get(literal[1:]) or {}).get("identifier") or []
                            if isinstance(i, dict)]
        elif literal and _names_our_organization(literal, ours.organization_id):
            return True
        if any(i.get("system") == NPI_SYSTEM and i.get("value") == ours.npi for i in identifiers):
            return True
    return False


def _array(expression: str) -> str:
    """A JSON array, or an empty one for anything else (unvalidated loads may hold odd shapes)."""
    return f"CASE WHEN jsonb_typeof({expression}) = 'array' THEN {expression} ELSE '[]'::jsonb END"


# payor_names_us in SQL, over a stored Coverage `r`.
_PAYOR_NAMES_US = f"""
EXISTS (
    SELECT 1 FROM jsonb_array_elements({_array("r.body -> 'payor'")}) AS p(payor)
    WHERE jsonb_typeof(p.payor) = 'object' AND (
        rtrim(p.payor ->> 'reference', '/') = 'Organization/' || %(organization_id)s
        OR right(rtrim(p.payor ->> 'reference', '/'), length(%(organization_id)s) + 14)
           = '/Organization/' || %(organization_id)s
        OR (p.payor -> 'identifier' ->> 'system' = %(npi_system)s AND p.payor -> 'identifier' ->> 'value' = %(npi)s)
        OR (left(p.payor ->> 'reference', 1) = '#' AND EXISTS (
            SELECT 1
            FROM jsonb_array_elements({_array("r.body -> 'contained'")}) AS c(resource)
            CROSS JOIN LATERAL jsonb_array_elements({_array("c.resource -> 'identifier'")}) AS ci(identifier)
            WHERE c.resource ->> 'id' = substr(p.payor ->> 'reference', 2)
              AND ci.identifier ->> 'system' = %(npi_system)s AND ci.identifier ->> 'value' = %(npi)s))))
"""  # noqa: S608 - only constants are formatted in

# Per touched member, the Coverage with us that carries an identity, ranked: in force today (status active,
# period around today) first, then the most recent (latest period end, an open end latest of all; then latest
# start, latest lastUpdated, and the id for a stable choice). Member number and subscriber id both come from
# that one Coverage. A member with Coverage in the store but none that qualifies gets an empty identity.
_REFRESH = f"""
WITH touched AS (
    SELECT DISTINCT r.member_id
    FROM pdex_resource r JOIN pdex_member m ON m.id = r.member_id
    WHERE r.resource_type = 'Coverage' AND (%(everyone)s OR m.fhir_id = ANY(%(patients)s))
), qualified AS (
    SELECT r.member_id, r.fhir_id, mb.value AS member_number, mb.system AS member_number_system,
           CASE WHEN length(r.body ->> 'subscriberId') <= %(max_length)s THEN r.body ->> 'subscriberId' ELSE '' END
               AS subscriber_id,
           (r.body ->> 'status' = 'active'
            AND (r.service_start IS NULL OR (r.service_start AT TIME ZONE 'UTC')::date <= %(today)s)
            AND (r.service_end IS NULL OR (r.service_end AT TIME ZONE 'UTC')::date >= %(today)s)) AS in_force,
           r.service_start, r.service_end, r.last_updated
    FROM pdex_resource r
    JOIN touched t ON t.member_id = r.member_id
    LEFT JOIN LATERAL (
        SELECT i.identifier ->> 'value' AS value, COALESCE(i.identifier ->> 'system', '') AS system
        FROM jsonb_array_elements({_array("r.body -> 'identifier'")}) WITH ORDINALITY AS i(identifier, position)
        WHERE jsonb_typeof(i.identifier) = 'object'
          AND length(i.identifier ->> 'value') BETWEEN 1 AND %(max_length)s
          AND jsonb_path_exists(i.identifier, '$.type.coding[*] ? (@.system == $system && @.code == "MB")',
                                jsonb_build_object('system', %(type_system)s::text))
        ORDER BY COALESCE(i.identifier ->> 'use', '') = 'old', i.position
        LIMIT 1
    ) mb ON true
    WHERE r.resource_type = 'Coverage'
      AND COALESCE(r.body ->> 'status', '') NOT IN ('draft', 'entered-in-error')
      AND {_PAYOR_NAMES_US}
), identity AS (
    SELECT DISTINCT ON (t.member_id) t.member_id, COALESCE(q.member_number, '') AS member_number,
           COALESCE(q.member_number_system, '') AS member_number_system,
           COALESCE(q.subscriber_id, '') AS subscriber_id, COALESCE(q.fhir_id, '') AS identity_coverage
    FROM touched t
    LEFT JOIN qualified q ON q.member_id = t.member_id AND (q.member_number IS NOT NULL OR q.subscriber_id <> '')
    ORDER BY t.member_id, q.in_force DESC NULLS LAST, q.service_end DESC NULLS FIRST,
             q.service_start DESC NULLS LAST, q.last_updated DESC, q.fhir_id DESC
)
UPDATE pdex_member m
SET member_number = i.member_number, member_number_system = i.member_number_system,
    subscriber_id = i.subscriber_id, identity_coverage = i.identity_coverage, updated_at = now()
FROM identity i
WHERE m.id = i.member_id
  AND (m.member_number, m.member_number_system, m.subscriber_id, m.identity_coverage)
      IS DISTINCT FROM (i.member_number, i.member_number_system, i.subscriber_id, i.identity_coverage)
"""  # noqa: S608 - only constants are formatted in


def refresh_member_identity(patient_ids: Collection[str] | None = None, *, today: date | None = None) -> int:
    """Copy member number and subscriber id from the winning Coverage of these members (Patient ids; None:
    every member with a Coverage); returns how many members changed. Idempotent: unchanged rows are not
    touched."""
    if patient_ids is not None and not patient_ids:
        return 0
    ours = our_identity()
    params = {
        "everyone": patient_ids is None, "patients": sorted(patient_ids or ()),
        "today": today or timezone.now().date(), "max_length": IDENTIFIER_MAX_LENGTH,
        "type_system": IDENTIFIER_TYPE_SYSTEM, "npi_system": NPI_SYSTEM, "npi": ours.npi,
        "organization_id": ours.organization_id,
    }
    with connection.cursor() as cursor:
        cursor.execute(_REFRESH, params)
        return cursor.rowcount
