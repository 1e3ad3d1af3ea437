"""The transmitter Provenance (spec §5.6, §5.7 rule 8): at least one per exchange, naming us as transmitter.

Used per output chunk by the bulk export and per page by $everything. Ids are derived from the targets and
the time, so a chunk written twice carries the same Provenance.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection

from pdex.extract import PAYER_DATA_SOURCE, SOURCE_FORMATS, format_instant

PDEX_PROVENANCE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance"
PARTICIPANT_TYPES = "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
PROVENANCE_NAMESPACE = uuid.UUID("5f0c3c3e-2c1b-4d0e-9a8e-6f1d8b8a2f10")
SOURCE_FROM = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/ProvenanceSourceFrom"


def payer_reference() -> str:
    """Our Organization, the `who` of every transmitter Provenance."""
    return f"Organization/{settings.PAYER_ORGANIZATION_ID}"


def payer_organization() -> dict[str, Any]:
    """Our own Organization resource (US Core Organization), for bundles that reference it."""
    return {
        "resourceType": "Organization",
        "id": settings.PAYER_ORGANIZATION_ID,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-organization"]},
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": settings.PAYER_NPI}],
        "active": True,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "pay",
                              "display": "Payer"}]}],
        "name": settings.PAYER_NAME,
    }


def source_formats_of(targets: Iterable[str]) -> list[str]:
    """The source formats ingest recorded for these resources (`Type/id`), sorted; empty when none is known."""
    references = list(targets)
    if not references:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT r.source_format FROM unnest(%s::text[]) AS t(ref)"
                       " JOIN pdex_resource r ON r.resource_type = split_part(t.ref, '/', 1)"
                       " AND r.fhir_id = split_part(t.ref, '/', 2) WHERE r.source_format <> ''"
                       " ORDER BY 1", [references])
        return [row[0] for row in cursor.fetchall()]


def source_entity(code: str) -> dict[str, Any]:
    """A Provenance entity saying the targets were made from a `code` source (PDex ProvenanceSourceFrom)."""
    display = SOURCE_FORMATS.get(code, code)
    return {
        "extension": [{"url": SOURCE_FROM, "valueCodeableConcept": {
            "coding": [{"system": PAYER_DATA_SOURCE, "code": code, "display": display}]}}],
        "role": "source",
        "what": {"display": f"{display} source record"},
    }


def transmitter_provenance(targets: Iterable[str], *, recorded: datetime, provenance_id: str | None = None,
                           source_formats: Iterable[str] = ()) -> dict:
    """A PDex Provenance saying we transmitted `targets` (references `Type/id`) at `recorded`; one source entity
    per format the targets were made from, when ingest knew it."""
    references = list(targets)
    if not references:
        raise ValueError("a Provenance needs at least one target")
    instant = format_instant(recorded)
    if provenance_id is None:
        provenance_id = str(uuid.uuid5(PROVENANCE_NAMESPACE, instant + "|" + "|".join(references)))
    body = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"lastUpdated": instant, "profile": [PDEX_PROVENANCE]},
        "target": [{"reference": reference} for reference in references],
        "recorded": instant,
        "agent": [{
            "type": {"coding": [{"system": PARTICIPANT_TYPES, "code": "transmitter", "display": "Transmitter"}]},
            "who": {"reference": payer_reference(), "display": settings.PAYER_NAME},
        }],
    }
    entities = [source_entity(code) for code in dict.fromkeys(source_formats)]
    if entities:
        body["entity"] = entities
    return body


def transmitter_provenance_line(targets: Iterable[str], *, recorded: datetime,
                                provenance_id: str | None = None, source_formats: Iterable[str] = ()) -> bytes:
    """The same Provenance as one NDJSON line (with its newline)."""
    body = transmitter_provenance(targets, recorded=recorded, provenance_id=provenance_id,
                                  source_formats=source_formats)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"
