"""FHIR views of single-member retrieval: Patient/{id}/$everything, {Type}?patient=, {Type}/{id}.

Thin: parse, call exports.retrieval.everything / .search, render. Every refusal is a FhirError (404 for anything
the partner may not see, so ids reveal nothing).
"""

from __future__ import annotations

import json

from django.http import HttpResponse

from exports.jobs.start import start_export
from exports.models import ExportJob
from exports.operations.kickoff import accepted
from exports.retrieval import binary, everything, search
from exports.rules import EXPORT_TYPES
from pdex.fhir import FHIR_JSON, FhirView, outcome_response, simple_outcome

PATIENT_EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"


def _query(request) -> dict[str, list[str]]:
    return {name: list(values) for name, values in request.query_params.lists()}


def _path(request) -> str:
    """The request path relative to the FHIR base, for paging links."""
    return request.path.removeprefix("/fhir")


def _granted(request) -> list[str]:
    return request.auth.scope.split() if request.auth is not None else []


def _json(text: str, status: int = 200) -> HttpResponse:
    return HttpResponse(text, status=status, content_type=FHIR_JSON)


class EverythingView(FhirView):
    """GET|POST /fhir/Patient/{id}/$everything; `Prefer: respond-async` runs it as a bulk job."""

    required_scopes = ("system/Patient.r",)
    audit_action, audit_entity = "everything", "Patient/{patient_id}"

    def get(self, request, patient_id: str):
        return self._everything(request, patient_id, body=None)

    def post(self, request, patient_id: str):
        return self._everything(request, patient_id, body=request.data)

    def _everything(self, request, patient_id: str, *, body):
        params = everything.parse_everything_params(query=_query(request), body=body,
                                                    prefer=request.headers.get("Prefer"))
        access = everything.member_access(request.partner, patient_id, request=request, action="everything")
        if params.respond_async:
            job_params = everything.everything_job(access, params, granted_scopes=_granted(request))
            job = start_export(partner=request.partner, kind=ExportJob.Kind.EVERYTHING, params=job_params,
                               request_url=request.build_absolute_uri(), request=request, messages=params.issues)
            return accepted(job, request)
        page = everything.everything_page(access, params, path=_path(request), granted_scopes=_granted(request))
        return _json(everything.bundle_text(page))


class SearchView(FhirView):
    """GET /fhir/{Type}?patient={id}&… for every exported type."""

    audit_action, audit_entity = "search", "{resource_type}"

    @property
    def required_scopes(self) -> tuple[str, ...]:
        return (f"system/{self.kwargs.get('resource_type', '')}.rs",)

    def get(self, request, resource_type: str):
        params = search.parse_search_params(resource_type, _query(request), prefer=request.headers.get("Prefer"))
        page = search.search_page(request.partner, params, path=_path(request), request=request)
        return _json(everything.bundle_text(page))


class ReadView(FhirView):
    """GET /fhir/{Type}/{id} under the same access rule and export rules."""

    audit_action, audit_entity = "read", "{resource_type}/{fhir_id}"

    @property
    def required_scopes(self) -> tuple[str, ...]:
        return (f"system/{self.kwargs.get('resource_type', '')}.r",)

    def get(self, request, resource_type: str, fhir_id: str):
        return _json(search.read_resource(request.partner, resource_type, fhir_id, request=request))


class BinaryView(FhirView):
    """GET /fhir/Binary/{id}: the attachment's bytes (its own media type), or the Binary resource when FHIR JSON
    is asked for; under the access rule of the DocumentReference pointing at it."""

    required_scopes = (("system/Binary.r", "system/DocumentReference.r"),)
    audit_action, audit_entity = "read", "Binary/{fhir_id}"

    def get(self, request, resource_type: str, fhir_id: str):
        found = binary.read_binary(request.partner, fhir_id, request=request)
        accept = request.headers.get("Accept", "")
        if FHIR_JSON in accept or "application/json" in accept:
            return _json(json.dumps(found.resource))
        return HttpResponse(found.data, content_type=found.content_type)


_read = ReadView.as_view()
_binary = BinaryView.as_view()


def read_any(request, resource_type: str, fhir_id: str):
    """GET of `{Type}/{id}`: the types we serve, and Binary; anything else is an unknown URL (404)."""
    if resource_type == "Binary":
        return _binary(request, resource_type=resource_type, fhir_id=fhir_id)
    if resource_type in EXPORT_TYPES:
        return _read(request, resource_type=resource_type, fhir_id=fhir_id)
    return outcome_response(404, simple_outcome("error", "not-found", f"{resource_type} is not served here."),
                            request=request)
