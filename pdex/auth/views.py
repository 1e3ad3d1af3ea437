"""OAuth2 endpoints: token (SMART Backend Services), dynamic client registration (RFC 7591), discovery."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from oauth2_provider.views import TokenView as DotTokenView
from oauthlib.oauth2 import BackendApplicationServer

from pdex import audit, metrics
from pdex.auth import discovery, ratelimit, registration
from pdex.auth.validator import TokenAttempt, start_attempt, too_many
from pdex.fhir import has_nul
from pdex.jsonbody import BodyError, parse_json, read_body

BEARER = "bearer"  # SMART's spelling (oauthlib says "Bearer"); clients compare case-insensitively
FORM = "application/x-www-form-urlencoded"
MAX_REGISTRATION_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> JsonResponse:
    """An RFC 6749 §5.2 / RFC 7591 §3.2.2 error body."""
    return JsonResponse({"error": error, "error_description": description}, status=status,
                        headers={**NO_STORE, **(headers or {})})


def rate_limited(retry_after: int, what: str = "token requests") -> JsonResponse:
    """429 with Retry-After; RFC 6749 defines no code for it, `temporarily_unavailable` is the nearest."""
    return oauth_error("temporarily_unavailable", too_many(retry_after, what), 429,
                       {"Retry-After": str(retry_after)})


def repeated_parameter(request: HttpRequest) -> str | None:
    """The first form parameter sent more than once: RFC 6749 §3.2, "Request and response parameters MUST NOT
    be included more than once" (two client_assertions would leave which one counts to the parser)."""
    return next((name for name, values in request.POST.lists() if len(values) > 1), None)


@method_decorator(csrf_exempt, name="dispatch")
class TokenView(DotTokenView):
    """POST /oauth/token: client credentials with a signed client assertion; nothing else."""

    server_class = BackendApplicationServer  # client_credentials only: no other grant is reachable
    http_method_names = ["post"]

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        attempt = start_attempt()
        by_address = ratelimit.hit(ratelimit.token_per_address(), ratelimit.source_address(request))
        if not by_address.allowed:
            attempt.refuse("rate limit per source address")
            response = rate_limited(by_address.retry_after)
        elif request.GET:
            attempt.refuse("parameters in the query string")
            response = oauth_error("invalid_request", "The token request's parameters belong in the form body, "
                                                      "not in the query string.")
        elif request.content_type != FORM:
            attempt.refuse("body is not application/x-www-form-urlencoded")
            response = oauth_error("invalid_request", f"The token request's body must be {FORM}.")
        elif has_nul(request.POST):
            attempt.refuse("U+0000 in a parameter")
            response = oauth_error("invalid_request", "The token request's parameters may not contain U+0000.")
        elif (repeated := repeated_parameter(request)) is not None:
            attempt.refuse(f"parameter {repeated[:40]} repeated")
            response = oauth_error("invalid_request", f"The parameter {repeated[:40]} may appear only once.")
        else:
            response = super().post(request, *args, **kwargs)
        body = json.loads(response.content or b"{}")
        if response.status_code == 200:
            body["token_type"] = BEARER
            response.content = json.dumps(body)
        record_attempt(attempt, body, request=request)
        response["Content-Type"] = "application/json"
        return response


def record_attempt(attempt: TokenAttempt, body: dict, *, request: HttpRequest) -> None:
    """Audit one token request: what was granted, or the real reason it was refused (never sent back)."""
    metrics.count_token_request(issued="access_token" in body, error=str(body.get("error", "")))
    if "access_token" in body:
        audit.record("token", audit.SUCCESS, partner=attempt.partner, reason="token issued",
                     detail={"scope": body.get("scope", ""), "expires_in": body.get("expires_in")}, request=request)
    else:
        audit.record("token", audit.REFUSED, partner=attempt.partner, client_id=attempt.client_id,
                     reason="; ".join(attempt.reasons) or body.get("error", "refused"),
                     detail={"error": body.get("error", "")}, request=request)


@method_decorator(csrf_exempt, name="dispatch")
class RegistrationView(View):
    """POST /oauth/register: RFC 7591 dynamic client registration."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> HttpResponse:
        by_address = ratelimit.hit(ratelimit.register_per_address(), ratelimit.source_address(request))
        if not by_address.allowed:
            audit.record("register", audit.REFUSED, reason="rate limit per source address", request=request,
                         detail={"error": "temporarily_unavailable"})
            return rate_limited(by_address.retry_after, "registrations")
        try:
            metadata = parse_json(read_body(request, content_length=request.META.get("CONTENT_LENGTH"),
                                            limit=MAX_REGISTRATION_BYTES))
        except BodyError as error:
            if error.status == 413:
                return oauth_error("invalid_request", error.message, 413)
            metadata = None  # registration's own error: the body is not client metadata
        try:
            client = registration.register_client(metadata, request=request)
        except registration.RegistrationError as exc:
            return oauth_error(exc.error, exc.description)
        return JsonResponse(client, status=201, headers=NO_STORE)


@require_GET
def smart_configuration(request: HttpRequest) -> JsonResponse:
    """Public and always application/json, whatever the Accept header (spec §8.2)."""
    return JsonResponse(discovery.smart_configuration())
