"""What every export kick-off shares: Prefer: respond-async, parameters, scopes per type, the 202 answer.

The three operations (one module each) differ only in who is exported; this is the service they call.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.utils import timezone

from exports import access, rules
from exports.jobs.start import start_export
from exports.models import ExportJob
from exports.params import ExportParams, parse_prefer
from matching.models import MemberMatchGroup
from pdex.fhir import BadRequest, Forbidden, fhir_json_response, operation_outcome, outcome_issue
from pdex.jobs import asyncstatus, servicelevels


def require_async(request) -> None:
    """PDex: the kick-off SHALL carry `Prefer: respond-async` (spec §5.1, §7.1)."""
    if "respond-async" not in parse_prefer(request.headers.get("Prefer")):
        raise BadRequest("This operation is asynchronous only: send the header 'Prefer: respond-async'.")


def require_type_scopes(request, types: tuple[str, ...]) -> None:
    """The token must cover every exported type (Bulk Data): `system/<Type>.rs` or a wildcard."""
    granted = (request.auth.scope or "").split() if request.auth is not None else []
    missing = access.missing_type_scopes(granted, types or rules.EXPORT_TYPES)
    if missing:
        raise Forbidden(f"The token's scopes do not cover the requested types: {', '.join(missing)}.")


def kick_off(request, *, kind: str, operation: str, group: MemberMatchGroup | None = None) -> ExportJob:
    """Validate the request and start the job; FhirError (400/403/429) otherwise."""
    require_async(request)
    params = ExportParams.from_request(request, operation=operation)
    require_type_scopes(request, params.types)
    return start_export(partner=request.partner, kind=kind, group=group,
                        params=params.job_params(request_time=timezone.now()), request_url=request_url(request),
                        request=request, messages=params.messages)


def request_url(request) -> str:
    """The manifest's `request`: the kick-off URL as the client called it (POST body parameters left out)."""
    return request.build_absolute_uri()


def accepted(job: ExportJob, request=None) -> JsonResponse:
    """202 Accepted with the status URL in Content-Location (Bulk Data 2.0.0), and Retry-After: when to poll
    first (a young job is told 1 s: a small export is done by then)."""
    outcome = operation_outcome(outcome_issue("information", "informational",
                                              f"Export accepted; poll {asyncstatus.status_url(job)} for status."))
    return fhir_json_response(outcome, status=202, headers={"Content-Location": asyncstatus.status_url(job),
                                                            "Retry-After": str(asyncstatus.retry_after(
                                                                job, now=timezone.now())),
                                                            **servicelevels.preference_applied(job)},
                              request=request)
