"""Our own enrollment systems as clients of the Consent write endpoint, never partners.

They hold bearer tokens of an OAuth application that has no Partner, with the scope ENROLLMENT_CONSENT_SCOPE.
No partner can ever hold that scope: the token endpoint grants a partner only scopes that `pdex.auth.scopes`
knows (its `allowed_scopes` are cleaned to those), and this one is deliberately not a SMART scope; and the
permission below refuses any token whose application belongs to a partner, whatever its scopes say.
Tokens are issued by `manage.py enrollment_token` and expire (ENROLLMENT_TOKEN_DAYS by default).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.utils import timezone
from oauth2_provider.models import AccessToken, Application
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from pdex import audit

ENROLLMENT_CONSENT_SCOPE = "enrollment/Consent.write"
APPLICATION_PREFIX = "enrollment: "


def issue_token(system: str, *, days: int = 90) -> AccessToken:
    """A bearer token for one of our enrollment systems (its application is created on first use)."""
    application, _ = Application.objects.get_or_create(
        name=f"{APPLICATION_PREFIX}{system}"[:255],
        defaults={"client_type": Application.CLIENT_CONFIDENTIAL,
                  "authorization_grant_type": Application.GRANT_CLIENT_CREDENTIALS})
    token = AccessToken.objects.create(application=application, token=secrets.token_urlsafe(40),
                                       scope=ENROLLMENT_CONSENT_SCOPE, expires=timezone.now() + timedelta(days=days))
    audit.record("enrollment-token", audit.SUCCESS, client_id=application.client_id,
                 reason=f"issued for {system}", detail={"days": days})
    return token


def system_name(token: AccessToken) -> str:
    return token.application.name.removeprefix(APPLICATION_PREFIX) if token.application_id else "unknown"


class EnrollmentSystemOnly(BasePermission):
    """401 without a valid token; 403 for a partner's token or one without the enrollment scope."""

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None or not token.application_id:
            raise exceptions.NotAuthenticated("A valid bearer token is required.")
        if getattr(token.application, "partner", None) is not None:
            raise exceptions.PermissionDenied("This endpoint is for our own enrollment systems.")
        if ENROLLMENT_CONSENT_SCOPE not in (token.scope or "").split():
            raise exceptions.PermissionDenied(f"The token lacks the scope {ENROLLMENT_CONSENT_SCOPE}.")
        return True
