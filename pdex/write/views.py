"""FHIR write endpoints for our own systems: `POST /fhir` (transaction / batch), `PUT|DELETE /fhir/{Type}/{id}`.

Thin: permission (pdex.write.access.InternalClientOnly), then pdex.write.bundle, then the response. Every write
is audited with the internal client and the counts per status, never the data.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from pdex import audit
from pdex.extract import format_instant
from pdex.fhir import (
    FHIR_JSON,
    BadRequest,
    FhirView,
    NotFound,
    fhir_json_response,
    outcome_response,
    parse_prefer,
    simple_outcome,
)
from pdex.write import bulkimport, bundle
from pdex.write.access import AnyToken, InternalClientOnly, internal_client_of, writer_for


def _audit(request, action: str, entity: str, detail: dict) -> None:
    audit.record(action, audit.SUCCESS, client_id=request.auth.application.client_id, entity=entity,
                 reason=f"by {writer_for(request.auth).name}", detail=detail, request=request)


class BundleView(FhirView):
    """POST /fhir: a transaction (all or nothing) or batch (entry by entry) Bundle."""

    permission_classes = [InternalClientOnly]
    audit_action, audit_entity = "write-bundle", "Bundle"

    def post(self, request):
        result = bundle.apply_bundle(request.data, writer_for(request.auth))
        _audit(request, "write-bundle", "Bundle", {"type": result.kind, "statuses": result.counts})
        return fhir_json_response(result.response_bundle(), request=request)


class ResourceWriteView(FhirView):
    """PUT /fhir/{Type}/{id} (create or update; the stored resource back) and DELETE (204, a tombstone kept)."""

    permission_classes = [InternalClientOnly]
    audit_action = {"PUT": "write-update", "DELETE": "write-delete"}
    audit_entity = "{resource_type}/{fhir_id}"

    def put(self, request, resource_type: str, fhir_id: str):
        done = bundle.put_resource(resource_type, fhir_id, request.data, writer_for(request.auth))
        _audit(request, "write-update", f"{resource_type}/{fhir_id}", {"status": done.status})
        response = HttpResponse(done.body_text, status=done.status_code, content_type=FHIR_JSON)
        response["Location"] = request.build_absolute_uri(f"/fhir/{resource_type}/{fhir_id}")
        response["Last-Modified"] = format_instant(done.last_modified) if done.last_modified else ""
        return response

    def delete(self, request, resource_type: str, fhir_id: str):
        bundle.delete_resource(resource_type, fhir_id, writer_for(request.auth))
        _audit(request, "write-delete", f"{resource_type}/{fhir_id}", {})
        return HttpResponse(status=204)


def by_method(**handlers: Callable) -> Callable:
    """One URL served by different views per HTTP method (a read app's GET, our systems' PUT and DELETE);
    anything else is 405 with an OperationOutcome and `Allow`."""
    allowed = ", ".join(sorted(name.upper() for name in handlers))

    @csrf_exempt
    def dispatch(request, *args, **kwargs):
        handler = handlers.get(request.method.lower())
        if handler is None:
            return outcome_response(405, simple_outcome("error", "not-supported",
                                                        f"{request.method} is not supported here."),
                                    {"Allow": allowed}, request)
        return handler(request, *args, **kwargs)

    return dispatch


class ImportKickoffView(FhirView):
    """POST /fhir/$import (Prefer: respond-async): load NDJSON files named by URL, asynchronously."""

    permission_classes = [InternalClientOnly]
    audit_action, audit_entity = "bulk-import-kickoff", "$import"

    def post(self, request):
        if "respond-async" not in parse_prefer(request.headers.get("Prefer")):
            raise BadRequest("$import runs asynchronously: send Prefer: respond-async.", code="required")
        writer = writer_for(request.auth)
        inputs = bulkimport.parse_import_request(request.data, writer)
        job = bulkimport.start_import(request.auth.application.internal_client, inputs,
                                      request_url=request.build_absolute_uri(), request=request)
        response = HttpResponse(status=202)
        response["Content-Location"] = request.build_absolute_uri(f"/fhir/$import-status/{job.id}")
        return response


class ImportStatusView(FhirView):
    """GET /fhir/$import-status/{id}: 202 with X-Progress while it runs, then 200 with the counts."""

    permission_classes = [AnyToken]
    audit_action, audit_entity = "bulk-import-status", "importjob/{job_id}"

    def get(self, request, job_id):
        client = internal_client_of(request.auth)
        if client is None:  # a partner's token: the same 404 as an unknown job
            raise NotFound(audit_reason="not an internal client's token")
        answer = bulkimport.status(job_id, client)
        response = fhir_json_response(answer.body, status=answer.http_status, headers=answer.headers,
                                      request=request) if answer.body is not None else HttpResponse(status=202)
        for name, value in answer.headers.items():
            response[name] = value
        return response
