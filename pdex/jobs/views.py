"""Status, cancel and download endpoints of the asynchronous request pattern (thin: see pdex.jobs.asyncstatus)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from rest_framework.negotiation import BaseContentNegotiation

from pdex.fhir import FHIR_NDJSON, FhirView, NotFound, PublicFhirView, json_media_type, operation_outcome, outcome_issue
from pdex.jobs import asyncstatus, outputs, signing
from pdex.jobs.models import OutputFile
from pdex.jobs.storage import READ_BLOCK


class AnyAccept(BaseContentNegotiation):
    """These views render their own bodies (manifest JSON, NDJSON), so any Accept header will do."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def granted_scopes(request) -> list[str]:
    return (request.auth.scope or "").split() if request.auth is not None else []


def json_response(status: int, body: dict | None, headers: dict[str, str], content_type: str) -> HttpResponse:
    response = HttpResponse(json.dumps(body) if body is not None else b"", status=status, content_type=content_type)
    for name, value in headers.items():
        response[name] = value
    return response


def file_blocks(handle: BinaryIO) -> Iterator[bytes]:
    """A file's blocks; closed when the response is (a generator's close runs its finally)."""
    try:
        while block := handle.read(READ_BLOCK):
            yield block
    finally:
        handle.close()


def file_response(request, output: OutputFile, content: Iterator[bytes] | BinaryIO, size: int) -> StreamingHttpResponse:
    """The file streamed as stored (a local file through the web server's sendfile), or gzip-compressed on the
    fly when the client accepts it (no length then: it is known only at the end, and nothing is buffered)."""
    if outputs.accepts_gzip(request.headers.get("Accept-Encoding")):
        blocks = file_blocks(content) if hasattr(content, "read") else content
        response = StreamingHttpResponse(outputs.gzipped(blocks), content_type=FHIR_NDJSON)
        response["Content-Encoding"] = "gzip"
    elif hasattr(content, "read"):
        response = FileResponse(content, content_type=FHIR_NDJSON)
        response["Content-Length"] = str(size)
    else:
        response = StreamingHttpResponse(content, content_type=FHIR_NDJSON)
        response["Content-Length"] = str(size)
    response["Vary"] = "Accept-Encoding"
    name = f"{output.kind}-{output.resource_type}-{output.sequence:05d}.ndjson"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


class BulkStatusView(FhirView):
    """GET: progress, manifest or failure; DELETE: cancel (202, then 404). Only the job's partner sees it."""

    content_negotiation_class = AnyAccept
    audit_action, audit_entity = {"GET": "bulk-status", "DELETE": "bulk-cancel"}, "bulkstatus/{job_id}"

    def get(self, request, job_id):
        answer = asyncstatus.poll(job_id, partner=request.partner, granted=granted_scopes(request))
        # The manifest is application/json (Bulk Data); an OperationOutcome follows the client's Accept.
        content_type = answer.content_type if answer.content_type == "application/json" else json_media_type(request)
        return json_response(answer.http_status, answer.body, answer.headers, content_type)

    def delete(self, request, job_id):
        asyncstatus.cancel(job_id, partner=request.partner, granted=granted_scopes(request), request=request)
        outcome = operation_outcome(outcome_issue("information", "informational", "The bulk job was cancelled."))
        return json_response(202, outcome, {}, json_media_type(request))


class BulkFileView(FhirView):
    """A manifest file, streamed to the job's partner with its bearer token (requiresAccessToken true)."""

    content_negotiation_class = AnyAccept
    audit_action, audit_entity = "bulk-download", "OutputFile/{file_id}"

    def get(self, request, file_id):
        return file_response(request, *asyncstatus.download(file_id, partner=request.partner,
                                                            granted=granted_scopes(request), request=request))


class SignedBulkFileView(PublicFhirView):
    """A manifest file at an HMAC-signed, expiring URL (EXPORT_PRESIGNED_MANIFEST with file storage)."""

    content_negotiation_class = AnyAccept
    audit_action, audit_entity = "bulk-download", "OutputFile/{file_id}"

    def get(self, request, file_id):
        if not signing.verify(file_id, request.GET.get("expires"), request.GET.get("signature")):
            raise NotFound(f"No bulk file {file_id}.")
        return file_response(request, *asyncstatus.download(file_id, partner=None, request=request, signed=True))
