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

from pdex.extract import format_instant

PDEX_PROVENANCE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance"
PARTICIPANT_TYPES = "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
PROVENANCE_NAMESPACE = uuid.UUID("5f0c3c3e-2c1b-4d0e-9a8e-6f1d8b8a2f10")


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


def transmitter_provenance(targets: Iterable[str], *, recorded: datetime, provenance_id: str | None = None) -> dict:
    """A PDex Provenance saying we transmitted `targets` (references `Type/id`) at `recorded`."""
    references = list(targets)
    if not references:
        raise ValueError("a Provenance needs at least one target")
    instant = format_instant(recorded)
    if provenance_id is None:
        provenance_id = str(uuid.uuid5(PROVENANCE_NAMESPACE, instant + "|" + "|".join(references)))
    return {
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


def transmitter_provenance_line(targets: Iterable[str], *, recorded: datetime,
                                provenance_id: str | None = None) -> bytes:
    """The same Provenance as one NDJSON line (with its newline)."""
    body = transmitter_provenance(targets, recorded=recorded, provenance_id=provenance_id)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"
