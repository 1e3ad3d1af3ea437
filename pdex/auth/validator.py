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

from pdex.auth import replay, scopes
from pdex.auth.assertion import ASSERTION_TYPE, AssertionRejected, ClientKeys, verify_client_assertion
from pdex.auth.discovery import token_endpoint_url
from pdex.models import Partner

CLIENT_AUTH_FAILED = "Client authentication failed."
MALFORMED_REQUEST = "The token request is missing a required parameter or is malformed."


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
            raise errors.InvalidRequestError(description=MALFORMED_REQUEST, request=request)
        if assertion_type != ASSERTION_TYPE:
            attempt.refuse("unsupported client_assertion_type")
            raise errors.InvalidClientError(description=CLIENT_AUTH_FAILED, request=request)
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
            raise errors.InvalidClientError(description=CLIENT_AUTH_FAILED, request=request) from None
        if request.client_id and request.client_id != verified.client_id:
            attempt.refuse("client_id parameter differs from the assertion's iss", client_id=verified.client_id)
            raise errors.InvalidClientError(description=CLIENT_AUTH_FAILED, request=request)
        ttl = verified.exp - now + settings.CLIENT_ASSERTION_CLOCK_SKEW
        if not replay.remember_jti(verified.client_id, verified.jti, ttl=ttl):
            attempt.refuse("jti already used", client_id=verified.client_id)
            raise errors.InvalidClientError(description=CLIENT_AUTH_FAILED, request=request)
        partner = found["partner"]
        attempt.partner, attempt.client_id = partner, verified.client_id
        request.client = partner.application
        request.client_id = verified.client_id
        return True

    def authenticate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        """Public clients do not exist here: every client proves its identity with a key."""
        return False

    def client_authentication_required(self, request, *args, **kwargs) -> bool:
        return True

    def get_default_scopes(self, client_id, request, *args, **kwargs) -> list[str]:
        """`scope` is required (SMART); asking for none is refused as invalid_scope."""
        return []

    def validate_scopes(self, client_id, requested, client, request, *args, **kwargs) -> bool:
        partner = getattr(client, "partner", None)
        granted = scopes.grant(requested or [], partner.allowed_scopes.split() if partner else [])
        if not granted:
            current_attempt().refuse("no requested scope is allowed")
            return False
        request.scopes = granted
        return True
