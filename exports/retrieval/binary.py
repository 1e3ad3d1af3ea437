"""`GET /fhir/Binary/{id}`: an attachment, under the access rule of the DocumentReference that points at it.

A Binary is never exported on its own (Bulk Data: a patient's Binary travels as a DocumentReference attachment);
the DocumentReference's `attachment.url` names it, absolute under our FHIR base (ingest makes it so), and the
partner downloads it with the token it exports with. It is served only when some DocumentReference pointing at
it is one the partner may read now (exports.retrieval.search.read_resource: consent, window, PA rule,
sensitivity); else 404, as for anything the partner may not see.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from exports.retrieval.search import read_resource
from pdex.fhir import NotFound
from pdex.models import Resource

REFERRERS = """
SELECT fhir_id FROM pdex_resource
WHERE resource_type = 'DocumentReference' AND member_id IS NOT NULL
  AND jsonb_path_exists(body, '$.content[*].attachment.url ? (@ == $relative || @ == $absolute)',
                        jsonb_build_object('relative', %(relative)s::text, 'absolute', %(absolute)s::text))
ORDER BY id
"""


@dataclass(frozen=True)
class BinaryContent:
    """A stored Binary: its resource, and its bytes with their media type."""

    resource: dict
    content_type: str
    data: bytes


def referring_documents(binary_id: str) -> list[str]:
    """Ids of the DocumentReferences whose attachment points at Binary/{binary_id}."""
    relative = f"Binary/{binary_id}"
    with connection.cursor() as cursor:
        cursor.execute(REFERRERS, {"relative": relative, "absolute": f"{settings.FHIR_BASE_URL}/{relative}"})
        return [row[0] for row in cursor.fetchall()]


def read_binary(partner, binary_id: str, *, request=None) -> BinaryContent:
    """The Binary if the partner may read a DocumentReference pointing at it; else NotFound."""
    missing = NotFound(f"Binary/{binary_id} is not known to this server or not available to this client.")
    stored = Resource.objects.filter(resource_type="Binary", fhir_id=binary_id).values_list("body", flat=True).first()
    if stored is None:
        raise missing
    for document_id in referring_documents(binary_id):
        try:
            read_resource(partner, "DocumentReference", document_id, request=request)
        except NotFound:
            continue
        try:
            data = base64.b64decode(stored.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            data = b""
        return BinaryContent(resource=stored, content_type=stored.get("contentType") or "application/octet-stream",
                             data=data)
    raise NotFound(missing.diagnostics, audit_reason="no DocumentReference pointing at it the client may read")
