"""Our own systems as writers: internal clients, their tokens, and the permission of the write endpoints.

An internal client is registered by an admin (admin page or `manage.py internal_client`), never by dynamic
registration, and is never a Partner. Partners cannot write, twice over: `pdex.partners.clean_scopes` drops every
scope with create/update/delete permissions from a partner's policy (so the token endpoint can never grant one),
and `InternalClientOnly` refuses any token whose OAuth application belongs to a partner, whatever it says.
Tokens are bearer tokens issued to the client's system for INTERNAL_TOKEN_DAYS (docs/auth.md, "Our own systems").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from oauth2_provider.models import AccessToken
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from pdex import audit
from pdex.auth import scopes
from pdex.extract import SOURCE_FORMATS
from pdex.models import InternalClient
from pdex.partners import new_application

DEFAULT_SCOPE = "system/*.write"
# The SMART v2 permission an entry needs: a create, an update (or a create, when the id is new), a delete.
CREATE, UPDATE, DELETE = "c", "u", "d"


@dataclass(frozen=True)
class Writer:
    """Who is writing: the internal client's name, the scopes of its token, the source format of its data."""

    name: str
    granted: tuple[str, ...]
    source_format: str = ""

    def may(self, permission: str, resource_type: str) -> bool:
        return scopes.satisfies(self.granted, f"system/{resource_type}.{permission}")


def clean_write_scopes(scope: str) -> str:
    """The write scopes (SMART scopes with c, u or d) of a space-separated list, in order, without duplicates."""
    kept: list[str] = []
    for item in scope.split():
        if scopes.is_write(item) and item not in kept:
            kept.append(item)
    return " ".join(kept)


@transaction.atomic
def register_internal_client(name: str, *, scope: str = DEFAULT_SCOPE, source_format: str = "",
                             actor: str = "", request=None) -> InternalClient:
    """A new internal client with its OAuth application (which no partner ever has)."""
    if source_format and source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}")
    cleaned = clean_write_scopes(scope)
    if not cleaned:
        raise ValueError("an internal client needs at least one write scope, e.g. system/*.write")
    client = InternalClient.objects.create(name=name, application=new_application(f"internal: {name}"),
                                           allowed_scopes=cleaned, source_format=source_format)
    audit.record("internal-client-create", audit.SUCCESS, client_id=client.application.client_id,
                 reason=f"registered by {actor or 'admin'}", detail={"scopes": cleaned}, request=request)
    return client


def issue_token(client: InternalClient, *, days: int | None = None, request=None) -> AccessToken:
    """A bearer token for the client's system, with the client's scopes."""
    if not client.active:
        raise ValueError(f"internal client {client.name} is not active")
    days = settings.INTERNAL_TOKEN_DAYS if days is None else days
    token = AccessToken.objects.create(application=client.application, token=secrets.token_urlsafe(40),
                                       scope=client.allowed_scopes, expires=timezone.now() + timedelta(days=days))
    audit.record("internal-token", audit.SUCCESS, client_id=client.application.client_id,
                 reason=f"issued for {client.name}", detail={"days": days})
    return token


def writer_for(token: AccessToken) -> Writer:
    client = token.application.internal_client
    return Writer(name=client.name, granted=tuple(token.scope.split()), source_format=client.source_format)


def internal_client_of(token: AccessToken | None) -> InternalClient | None:
    """The active internal client a token belongs to; None for a partner's token or anything else."""
    if token is None or not token.application_id or getattr(token.application, "partner", None) is not None:
        return None
    client = getattr(token.application, "internal_client", None)
    return client if client is not None and client.active else None


class AnyToken(BasePermission):
    """401 without a valid token; what the token may see is the view's business (a status URL answers 404 to
    anyone but the job's client, so it tells nobody else that the job exists)."""

    def has_permission(self, request, view) -> bool:
        if request.auth is None:
            raise exceptions.NotAuthenticated("A valid bearer token is required.")
        return True


class InternalClientOnly(BasePermission):
    """401 without a valid token; 403 for a partner's token, an inactive client, or a token with no write scope."""

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None or not token.application_id:
            raise exceptions.NotAuthenticated("A valid bearer token is required.")
        if getattr(token.application, "partner", None) is not None:
            raise exceptions.PermissionDenied("Writing is for our own systems; a partner's token cannot write.")
        client = getattr(token.application, "internal_client", None)
        if client is None or not client.active:
            raise exceptions.PermissionDenied("The token's client is not an active internal client.")
        if not any(scopes.is_write(scope) for scope in token.scope.split()):
            raise exceptions.PermissionDenied("The token has no write scope.")
        return True
