"""django-oauth-toolkit validator for SMART Backend Services (private_key_jwt client assertions).

DOT has no private_key_jwt; it fits in as `authenticate_client`, which verifies the assertion and sets
`request.client`. Tokens stay ordinary DOT AccessTokens, validated on every API call by DOT itself.
What the validator learns (partner, why it refused) goes into the current `TokenAttempt`, which the
token view writes to the audit trail.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.conf import settings
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauthlib.oauth2.rfc6749 import errors

from pdex.auth import ratelimit, replay, scopes
from pdex.auth.assertion import (
    ASSERTION_TYPE,
    CLIENT_AUTH_FAILED,
    AssertionRejected,
    ClientKeys,
    verify_client_assertion,
)
from pdex.auth.discovery import token_endpoint_url
from pdex.models import Partner

JTI_REUSED = "The client_assertion's jti was already used: sign a new assertion, with a fresh jti, for each request."


class RateLimited(errors.OAuth2Error):
    """429: too many token requests from one client (RFC 6749 has no code for it; see docs/auth.md)."""

    error = "temporarily_unavailable"
    status_code = 429

    def __init__(self, *, retry_after: int, **kwargs):
        super().__init__(**kwargs)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def too_many(retry_after: int, what: str = "token requests") -> str:
    return f"Too many {what}; retry in {retry_after} seconds."


@dataclass
class TokenAttempt:
    """One token request as the audit trail sees it."""

    partner: Partner | None = None
    client_id: str = ""
    reasons: list[str] = field(default_factory=list)

    def refuse(self, reason: str, *, client_id: str = "") -> None:
        self.reasons.append(reason)
        if client_id and not self.client_id:
            self.client_id = client_id
            self.partner = _partner(client_id)


_attempt: ContextVar[TokenAttempt | None] = ContextVar("token_attempt", default=None)


def start_attempt() -> TokenAttempt:
    attempt = TokenAttempt()
    _attempt.set(attempt)
    return attempt


def current_attempt() -> TokenAttempt:
    return _attempt.get() or start_attempt()


def _partner(client_id: str) -> Partner | None:
    return Partner.objects.select_related("application").filter(application__client_id=client_id).first()


def _keys_of(partner: Partner) -> ClientKeys:
    return ClientKeys(client_id=partner.client_id, active=partner.is_active, jwks=partner.jwks,
                      jwks_url=partner.jwks_url)


class SmartBackendValidator(OAuth2Validator):
    """Client authentication by signed assertion only; scopes granted as requested ∩ the partner's policy."""

    def authenticate_client(self, request, *args, **kwargs) -> bool:
        attempt = current_attempt()
        assertion_type = getattr(request, "client_assertion_type", None)
        assertion = getattr(request, "client_assertion", None)
        if not assertion_type or not assertion:
            attempt.refuse("client_assertion or client_assertion_type missing")
            raise errors.InvalidRequestError(
                description="client_assertion and client_assertion_type are required (private_key_jwt).",
                request=request)
        if assertion_type != ASSERTION_TYPE:
            attempt.refuse("unsupported client_assertion_type")
            raise errors.InvalidClientError(description=f"client_assertion_type must be {ASSERTION_TYPE}.",
                                            request=request)
        now = int(time.time())
        found: dict[str, Partner] = {}

        def find_client(client_id: str) -> ClientKeys | None:
            partner = _partner(client_id)
            if partner is None:
                return None
            found["partner"] = partner
            return _keys_of(partner)

        try:
            verified = verify_client_assertion(
                assertion, token_url=token_endpoint_url(), now=now, find_client=find_client,
                max_lifetime=settings.CLIENT_ASSERTION_MAX_LIFETIME, skew=settings.CLIENT_ASSERTION_CLOCK_SKEW,
            )
        except AssertionRejected as exc:
            attempt.refuse(exc.reason, client_id=exc.client_id)
            if exc.description != CLIENT_AUTH_FAILED:  # with a client id: its own signature, wrong claims
                self._count_client(attempt, exc.client_id, request)
            raise errors.InvalidClientError(description=exc.description, request=request) from None
        self._count_client(attempt, verified.client_id, request)
        if request.client_id and request.client_id != verified.client_id:
            attempt.refuse("client_id parameter differs from the assertion's iss", client_id=verified.client_id)
            raise errors.InvalidClientError(description="The client_id parameter must equal the client_assertion's "
                                                        "iss.", request=request)
        ttl = verified.exp - now + settings.CLIENT_ASSERTION_CLOCK_SKEW
        if not replay.remember_jti(verified.client_id, verified.jti, ttl=ttl):
            attempt.refuse("jti already used", client_id=verified.client_id)
            raise errors.InvalidClientError(description=JTI_REUSED, request=request)
        partner = found["partner"]
        attempt.partner, attempt.client_id = partner, verified.client_id
        request.client = partner.application
        request.client_id = verified.client_id
        return True

    @staticmethod
    def _count_client(attempt: TokenAttempt, client_id: str, request) -> None:
        """Count a request its client's signature vouches for (TOKEN_RATE_PER_CLIENT); 429 beyond the limit.

        Only signed requests count, so nobody can spend another client's budget by naming it in `iss`.
        """
        if not client_id:
            return
        usage = ratelimit.hit(ratelimit.token_per_client(), client_id)
        if not usage.allowed:
            attempt.refuse("rate limit per client", client_id=client_id)
            raise RateLimited(retry_after=usage.retry_after, description=too_many(usage.retry_after),
                              request=request)

    def authenticate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        """Public clients do not exist here: every client proves its identity with a key."""
        return False

    def client_authentication_required(self, request, *args, **kwargs) -> bool:
        return True

    def get_default_scopes(self, client_id, request, *args, **kwargs) -> list[str]:
        """`scope` is required (SMART); asking for none is refused as invalid_scope."""
        return []

    def validate_scopes(self, client_id, requested, client, request, *args, **kwargs) -> bool:
        """Requested ∩ allowed; a scope naming no FHIR resource type refuses the request (RFC 6749 §5.2)."""
        unknown = [scope for scope in requested or [] if scopes.names_unknown_resource_type(scope)]
        if unknown:
            current_attempt().refuse("scope names an unknown resource type")
            raise errors.InvalidScopeError(
                description=f"The scope {unknown[0][:100]} names no FHIR R4 resource type.", request=request)
        partner = getattr(client, "partner", None)
        granted = scopes.grant(requested or [], partner.allowed_scopes.split() if partner else [])
        if not granted:
            current_attempt().refuse("no requested scope is allowed")
            raise errors.InvalidScopeError(
                description="None of the requested scopes is allowed for this client.", request=request)
        request.scopes = granted
        return True
