"""DRF permission that turns a view's `required_scopes` into 401 / 403 decisions."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from pdex.auth import scopes


class HasRequiredScopes(BasePermission):
    """401 without a valid token of an active partner; 403 when the token's scopes fall short."""

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None:
            raise exceptions.NotAuthenticated("A valid bearer token is required.")
        partner = getattr(token.application, "partner", None) if token.application_id else None
        if partner is None or not partner.is_active:
            raise exceptions.AuthenticationFailed("The token's client is not an active partner.")
        if not scopes.satisfies_all(token.scope.split(), getattr(view, "required_scopes", ())):
            raise exceptions.PermissionDenied("The token's scopes do not allow this operation.")
        return True
