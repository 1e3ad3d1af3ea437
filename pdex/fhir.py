"""FHIR JSON at the edge: media types, OperationOutcome errors, and the base class of every FHIR view.

Services raise `FhirError` (or a subclass); one handler turns every error under /fhir/ — ours, DRF's and
Django's own (unknown URL, unhandled exception) — into an OperationOutcome with the right status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.views import APIView

from pdex import audit
from pdex.renderers import FHIR_JSON, FHIR_NDJSON  # noqa: F401 - re-exported for views

log = logging.getLogger(__name__)
FHIR_PREFIXES = ("/fhir/", "/fhir")


# --- OperationOutcome ------------------------------------------------------------------------------

def outcome_issue(severity: str, code: str, diagnostics: str = "", *, details: str = "",
                  expression: Iterable[str] = ()) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if details:
        issue["details"] = {"text": details}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = list(expression)
    return issue


def operation_outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def simple_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return operation_outcome(outcome_issue(severity, code, diagnostics))


def json_media_type(request: Any = None) -> str:
    """`application/fhir+json`, or `application/json` when the client prefers that.

    FHIR (http.html, content types): "If a client provides a generic mime type in the Accept header
    (application/xml, text/xml, or application/json), the server SHOULD respond with the requested mime type";
    the body is the same FHIR JSON either way.
    """
    preferred = getattr(request, "get_preferred_type", None)
    return (preferred([FHIR_JSON, "application/json"]) if preferred else None) or FHIR_JSON


def outcome_response(status: int, outcome: dict[str, Any], headers: dict[str, str] | None = None,
                     request: Any = None) -> HttpResponse:
    """An OperationOutcome response that needs no DRF negotiation (middleware, raw views)."""
    response = HttpResponse(json.dumps(outcome), status=status, content_type=json_media_type(request))
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class FhirError(Exception):
    """An error to answer with an OperationOutcome; subclasses fix the usual status and issue code.

    `audit_reason`, `audit_entity` and `audit_detail` are what the audit trail records of the refusal beyond
    its status and code (the edge writes it: `audit_refusal`). They are for our compliance staff, never for
    the client, and never hold demographics or other PHI.
    """

    status = 400
    code = "invalid"
    severity = "error"

    def __init__(self, diagnostics: str, *, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, issues: list[dict[str, Any]] | None = None,
                 audit_reason: str = "", audit_entity: str = "", audit_detail: dict[str, Any] | None = None):
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra_issues = issues or []
        self.audit_reason = audit_reason
        self.audit_entity = audit_entity
        self.audit_detail = audit_detail or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(outcome_issue(self.severity, self.code, self.diagnostics), *self.extra_issues)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class Gone(FhirError):
    status, code = 410, "deleted"


class Forbidden(FhirError):
    """A valid token whose scopes fall short (403); what the caller may not even know of is NotFound instead."""

    status, code = 403, "forbidden"


class TooManyRequests(FhirError):
    status, code = 429, "throttled"

    def __init__(self, diagnostics: str, *, retry_after: int, **kwargs: Any):
        super().__init__(diagnostics, headers={"Retry-After": str(retry_after)}, **kwargs)


_DRF_CODES: list[tuple[type[Exception], str]] = [
    (drf_exceptions.NotAuthenticated, "login"),
    (drf_exceptions.AuthenticationFailed, "login"),
    (drf_exceptions.PermissionDenied, "forbidden"),
    (drf_exceptions.NotFound, "not-found"),
    (drf_exceptions.MethodNotAllowed, "not-supported"),
    (drf_exceptions.NotAcceptable, "not-supported"),
    (drf_exceptions.UnsupportedMediaType, "not-supported"),
    (drf_exceptions.ParseError, "structure"),
    (drf_exceptions.Throttled, "throttled"),
    (drf_exceptions.ValidationError, "invalid"),
]


def audit_refusal(view: Any, request: Any, exc: Exception, status: int, code: str) -> None:
    """The one place a refused FHIR request is audited: the view declares the action and the entity (from its
    URL), the exception may add a reason, an entity and details. Views without an `audit_action` are not
    audited (metadata, discovery)."""
    action = getattr(view, "audit_action", None)
    if isinstance(action, Mapping):
        action = action.get(getattr(request, "method", ""))
    if not action:
        return
    token = getattr(request, "auth", None)
    partner = getattr(request, "partner", None) or getattr(getattr(token, "application", None), "partner", None)
    entity = getattr(exc, "audit_entity", "") or view.audit_entity_for(request)
    why = getattr(exc, "audit_reason", "")
    audit.record(action, audit.REFUSED, partner=partner, entity=entity, request=request,
                 reason=f"{status} {code}" + (f": {why}" if why else ""),
                 detail=getattr(exc, "audit_detail", None) or {})


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    """DRF's EXCEPTION_HANDLER: every error becomes an OperationOutcome, never an HTML page; every refusal of
    an audited view is audited."""
    response = _error_response(exc, context.get("request"))
    if 400 <= response.status_code < 500:
        code = getattr(exc, "code", None) if isinstance(exc, FhirError) else _drf_code(exc)
        audit_refusal(context.get("view"), context.get("request"), exc, response.status_code, code or "invalid")
    return response


def _drf_code(exc: Exception) -> str:
    if isinstance(exc, Http404):
        return "not-found"
    if isinstance(exc, DjangoPermissionDenied):
        return "forbidden"
    return next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "processing")


def _error_response(exc: Exception, request: Any = None) -> HttpResponse:
    if isinstance(exc, FhirError):
        return outcome_response(exc.status, exc.outcome(), exc.headers, request)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "processing")
        headers: dict[str, str] = {}
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait) + 1)
        if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
            headers["WWW-Authenticate"] = 'Bearer realm="fhir"'
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return outcome_response(exc.status_code, simple_outcome("error", code, str(detail)), headers, request)
    log.exception("unhandled error in a FHIR view", exc_info=exc)
    return outcome_response(500, simple_outcome("fatal", "exception", "Internal server error."), request=request)


class FhirErrorMiddleware:
    """Catches what DRF never sees under /fhir/: unknown URLs, Django's own errors, unhandled exceptions."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(FHIR_PREFIXES) or response.status_code < 400:
            return response
        content_type = response.get("Content-Type", "")
        if content_type.startswith((FHIR_JSON, "application/json")):
            return response
        code = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                406: "not-supported", 415: "not-supported", 429: "throttled"}.get(response.status_code)
        if code is None:
            code = "exception" if response.status_code >= 500 else "invalid"
        reason = response.reason_phrase or "Error"
        new = outcome_response(response.status_code, simple_outcome("error", code, reason), request=request)
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                new[header] = response[header]
        return new

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(FHIR_PREFIXES):
            return None
        if isinstance(exception, FhirError):
            return outcome_response(exception.status, exception.outcome(), exception.headers, request)
        log.exception("unhandled error under /fhir/", exc_info=exception)
        return outcome_response(500, simple_outcome("fatal", "exception", "Internal server error."), request=request)


class FhirView(APIView):
    """Base of every authenticated FHIR endpoint.

    `required_scopes` lists what the token must carry: each item is a scope, or a tuple of scopes any one
    of which will do. After authentication `request.partner` is the calling partner.

    `audit_action` (a name, or one per HTTP method) and `audit_entity` (a template over the URL's parameters,
    e.g. "Group/{group_id}") say how a refusal of this view is audited (`audit_refusal`).
    """

    required_scopes: tuple[str | tuple[str, ...], ...] = ()
    audit_action: str | Mapping[str, str] | None = None
    audit_entity: str = ""

    def audit_entity_for(self, request) -> str:
        try:
            return self.audit_entity.format(**self.kwargs)[:300]
        except (KeyError, IndexError, ValueError):
            return self.audit_entity

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        request.partner = getattr(getattr(request.auth, "application", None), "partner", None)


class PublicFhirView(FhirView):
    """A FHIR endpoint anyone may call (/metadata, SMART discovery, signed file URLs)."""

    authentication_classes: list = []
    permission_classes: list = []


def fhir_json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None,
                       request: Any = None) -> JsonResponse:
    response = JsonResponse(body, status=status, content_type=json_media_type(request))
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def parse_prefer(header: str | None) -> set[str]:
    """The tokens of a Prefer header (RFC 7240), e.g. {'respond-async', 'handling=lenient', 'priority=urgent'}."""
    return {token.strip().replace(" ", "").lower() for token in (header or "").replace(";", ",").split(",")
            if token.strip()}
