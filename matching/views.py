"""$member-match, $bulk-member-match, and Group read/search: parse, check, call a service, render."""

from __future__ import annotations

from django.http import HttpResponse
from rest_framework.parsers import FormParser

from matching import jobs, selectors, services
from pdex.auth import scopes
from pdex.fhir import BadRequest, FhirView, fhir_json_response, has_nul, operation_outcome, outcome_issue
from pdex.jobs import servicelevels

GROUP_READ = ("system/Group.rs", scopes.MATCH_GROUP_EXPORT)


class MemberMatchView(FhirView):
    """POST [base]/Patient/$member-match (HRex): 200 Parameters, or 422 with one generic text."""

    required_scopes = (scopes.MEMBER_MATCH,)
    http_method_names = ["post", "options"]
    audit_action = "member-match"

    def post(self, request) -> HttpResponse:
        member = services.member_match(partner=request.partner, body=request.data, request=request)
        return fhir_json_response(services.member_match_response(member))


class BulkMemberMatchView(FhirView):
    """POST [base]/Group/$bulk-member-match (PDex): asynchronous, 202 + Content-Location."""

    required_scopes = (scopes.BULK_MEMBER_MATCH,)
    http_method_names = ["post", "options"]
    audit_action = "bulk-member-match"
    large_body = True

    def post(self, request) -> HttpResponse:
        if "respond-async" not in request.headers.get("Prefer", ""):
            raise BadRequest("$bulk-member-match is asynchronous: send 'Prefer: respond-async'.", code="not-supported")
        job = jobs.start_bulk_match(partner=request.partner, body=request.data,
                                        request_url=request.build_absolute_uri(), request=request)
        outcome = operation_outcome(outcome_issue("information", "informational", "Bulk member match accepted."))
        return fhir_json_response(outcome, status=202, headers={"Content-Location": selectors.status_url(job),
                                                                **servicelevels.preference_applied(job)})


class GroupReadView(FhirView):
    """GET [base]/Group/{id}: only the caller's Groups; anything else is 404."""

    required_scopes = (GROUP_READ,)
    audit_action, audit_entity = "group-read", "Group/{group_id}"

    def get(self, request, group_id: str) -> HttpResponse:
        return fhir_json_response(selectors.read_group(partner=request.partner, group_id=group_id, request=request))


class GroupSearchView(FhirView):
    """GET [base]/Group?… and POST [base]/Group/_search (form body): a searchset of the caller's Groups only."""

    required_scopes = (GROUP_READ,)
    audit_action, audit_entity = "group-search", "Group"
    parser_classes = [FormParser]

    def get(self, request) -> HttpResponse:
        return fhir_json_response(selectors.search_groups(partner=request.partner, params=request.query_params,
                                                          base_url=self.search_url(request)))

    def post(self, request) -> HttpResponse:
        params = request.query_params.copy()
        form = request.data if hasattr(request.data, "lists") else None  # an empty body parses to {}
        if form is not None and has_nul(form):
            raise BadRequest("Search parameters may not contain U+0000.", code="value")
        for name, values in (form.lists() if form is not None else ()):
            params.setlist(name, params.getlist(name) + values)
        return fhir_json_response(selectors.search_groups(partner=request.partner, params=params,
                                                          base_url=self.search_url(request)))

    @staticmethod
    def search_url(request) -> str:
        return request.build_absolute_uri(request.path).removesuffix("/_search")
