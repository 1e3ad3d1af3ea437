"""FHIR JSON at the edge: media types, OperationOutcome errors, and the base class of every FHIR view.

Services raise `FhirError` (or a subclass); one handler turns every error under /fhir/ — ours, DRF's and
Django's own (unknown URL, unhandled exception) — into an OperationOutcome with the right status.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.request import Empty
from rest_framework.views import APIView

from pdex import audit
from pdex.jsonbody import MAX_DEPTH, BodyError, gc_paused, parse_json, read_body  # noqa: F401 - re-exported
from pdex.renderers import FHIR_JSON, FHIR_NDJSON  # noqa: F401 - re-exported for views

log = logging.getLogger(__name__)
FHIR_PREFIXES = ("/fhir/", "/fhir")
OAUTH_PREFIXES = ("/oauth/",)
HEALTH_PATHS = ("/healthz", "/readyz", "/client/jwks.json")
# FHIR's id grammar (datatypes.html#id): checked before any query, so no other text ever reaches the database.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# The one 404 body: another partner's object, a member without a consent valid now, an unknown id and an unknown
# URL all answer exactly these bytes, so a 404 tells nothing about what exists. What was missing is audited.
NOT_FOUND_TEXT = "The resource is not known to this server or not available to this client."


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
    """Everything a partner may not see. The client always gets NOT_FOUND_TEXT; `diagnostics` (what exactly was
    not found) is for the server's log and code readers, `audit_reason` for the audit trail."""

    status, code = 404, "not-found"

    def __init__(self, diagnostics: str = NOT_FOUND_TEXT, **kwargs: Any):
        super().__init__(diagnostics, **kwargs)

    def outcome(self) -> dict[str, Any]:
        return not_found_outcome()


def not_found_outcome() -> dict[str, Any]:
    return simple_outcome("error", "not-found", NOT_FOUND_TEXT)


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


def valid_fhir_id(value: Any) -> bool:
    return isinstance(value, str) and FHIR_ID.fullmatch(value) is not None


def require_fhir_id(value: Any, what: str = "resource") -> str:
    """`value` if it is a FHIR id; else the one 404 (no resource can have that id)."""
    if not valid_fhir_id(value):
        raise NotFound(f"{what} id is not a FHIR id", audit_reason="not a FHIR id")
    return value


def read_json_body(request: Any) -> Any:
    """A raw (non-DRF) view's JSON body through the one reader; BadRequest / PayloadTooLarge when refused."""
    try:
        return parse_json(read_body(request, content_length=request.META.get("CONTENT_LENGTH")))
    except BodyError as error:
        raise body_error(error) from None


def body_error(error: BodyError) -> FhirError:
    if error.status == 413:
        return PayloadTooLarge(error.message)
    return BadRequest(error.message, code="structure")


def has_nul(params: Any) -> bool:
    """Whether any name or value of a QueryDict holds U+0000 (PostgreSQL text cannot)."""
    return any("\x00" in name or any("\x00" in str(v) for v in values) for name, values in params.lists())


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
    # What authentication already found, never a new attempt: the refusal may be of a request authentication
    # itself cannot read (content negotiation fails first; DOT reads the body to authenticate).
    token = getattr(request, "_auth", None)
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
    if isinstance(exc, BodyError):
        return "too-costly" if exc.status == 413 else "structure"
    if isinstance(exc, DjangoPermissionDenied):
        return "forbidden"
    return next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "processing")


def _error_response(exc: Exception, request: Any = None) -> HttpResponse:
    if isinstance(exc, BodyError):
        exc = body_error(exc)
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The request body is too large.")
    elif isinstance(exc, SuspiciousOperation):
        exc = BadRequest("The request is malformed.")
    if isinstance(exc, FhirError):
        return outcome_response(exc.status, exc.outcome(), exc.headers, request)
    if isinstance(exc, (Http404, drf_exceptions.NotFound)):
        return outcome_response(404, not_found_outcome(), request=request)
    if isinstance(exc, DjangoPermissionDenied):
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


def is_api_path(path: str) -> bool:
    return path.startswith(FHIR_PREFIXES + OAUTH_PREFIXES) or path in HEALTH_PATHS


_OAUTH_ERRORS = {401: "invalid_client", 429: "temporarily_unavailable"}


def oauth_error_body(status: int, description: str) -> dict[str, str]:
    """RFC 6749 §5.2's shape for an error Django or the server produced under /oauth/."""
    error = "server_error" if status >= 500 else _OAUTH_ERRORS.get(status, "invalid_request")
    return {"error": error, "error_description": description}


def api_error_response(request: HttpRequest, status: int, reason: str, *, exc: Exception | None = None) -> HttpResponse:
    """A client-facing error in the client's language: OperationOutcome under /fhir/, RFC 6749 JSON under
    /oauth/, a JSON status elsewhere (health)."""
    path = request.path
    if path.startswith(FHIR_PREFIXES):
        if isinstance(exc, (FhirError, BodyError, SuspiciousOperation)):
            return _error_response(exc, request)
        if status == 404:
            return outcome_response(404, not_found_outcome(), request=request)
        code = {401: "login", 403: "forbidden", 405: "not-supported", 406: "not-supported", 413: "too-costly",
                415: "not-supported", 429: "throttled"}.get(status)
        if code is None:
            code = "exception" if status >= 500 else "invalid"
        return outcome_response(status, simple_outcome("error", code, reason), request=request)
    if path.startswith(OAUTH_PREFIXES):
        if isinstance(exc, BodyError):
            status, reason = exc.status, exc.message
        elif isinstance(exc, RequestDataTooBig):
            status, reason = 413, "The request body is too large."
        return JsonResponse(oauth_error_body(status, reason), status=status,
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    return JsonResponse({"status": "error", "error": reason}, status=status)


class FhirErrorMiddleware:
    """Every error a client of the API sees is JSON: it catches what DRF never sees — unknown URLs, Django's own
    refusals (CSRF, ALLOWED_HOSTS, oversized forms), unhandled exceptions — under /fhir/ (OperationOutcome),
    /oauth/ (RFC 6749) and the health endpoints. Listed first in MIDDLEWARE, so it sees the answers of every
    other middleware too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or not is_api_path(request.path):
            return response
        content_type = response.get("Content-Type", "")
        if content_type.startswith((FHIR_JSON, "application/json")):
            return response
        new = api_error_response(request, response.status_code, response.reason_phrase or "Error")
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                new[header] = response[header]
        return new

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        if isinstance(exception, FhirError) and request.path.startswith(FHIR_PREFIXES):
            return outcome_response(exception.status, exception.outcome(), exception.headers, request)
        if isinstance(exception, (BodyError, RequestDataTooBig, SuspiciousOperation)):
            status = getattr(exception, "status", 413 if isinstance(exception, RequestDataTooBig) else 400)
            return api_error_response(request, status, "The request is malformed.", exc=exception)
        log.exception("unhandled error under %s", request.path[:100], exc_info=exception)
        return api_error_response(request, 500, "Internal server error.")


class FhirView(APIView):
    """Base of every authenticated FHIR endpoint.

    `required_scopes` lists what the token must carry: each item is a scope, or a tuple of scopes any one
    of which will do. After authentication `request.partner` is the calling partner.

    `audit_action` (a name, or one per HTTP method) and `audit_entity` (a template over the URL's parameters,
    e.g. "Group/{group_id}") say how a refusal of this view is audited (`audit_refusal`).

    `large_body` marks a view whose body may run to tens of megabytes ($bulk-member-match: millions of parsed
    objects). Python's cycle collector then stays off for the whole request, and the parsed body is dropped
    before it comes back on, so reference counting frees it at once. Otherwise the collector walks the whole
    tree several times while the view reads it (0.2–0.5 s of a 10,000-member kick-off), and, because DRF's
    Request sits in a reference cycle, the tree outlives the request until a full collection.
    """

    required_scopes: tuple[str | tuple[str, ...], ...] = ()
    audit_action: str | Mapping[str, str] | None = None
    audit_entity: str = ""
    large_body: bool = False

    def dispatch(self, request, *args, **kwargs):
        if not self.large_body:
            return super().dispatch(request, *args, **kwargs)
        with gc_paused():
            try:
                return super().dispatch(request, *args, **kwargs)
            finally:
                parsed = getattr(self, "request", None)
                if parsed is not None and hasattr(parsed, "_full_data"):
                    parsed._data = parsed._full_data = Empty  # DRF keeps no public way to let go of a body

    def audit_entity_for(self, request) -> str:
        try:
            return self.audit_entity.format(**self.kwargs)[:300]
        except (KeyError, IndexError, ValueError):
            return self.audit_entity

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        request.partner = getattr(getattr(request.auth, "application", None), "partner", None)
        for name, value in kwargs.items():
            if isinstance(value, str):
                require_fhir_id(value, name)
        if has_nul(request.query_params):
            raise BadRequest("Search parameters may not contain U+0000.", code="value")


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
