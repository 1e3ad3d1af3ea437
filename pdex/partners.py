"""Services for requesting payers (partners): create with their OAuth client, approve, suspend."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db import transaction
from oauth2_provider.models import AccessToken, Application

from pdex import audit
from pdex.auth import jwks as jwks_lib
from pdex.auth import scopes
from pdex.models import Partner


def new_application(name: str) -> Application:
    """The DOT client behind a partner: confidential, client credentials only (keys, never its secret)."""
    return Application.objects.create(
        name=name[:255], client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS, skip_authorization=True,
    )


def clean_scopes(scope: str) -> str:
    """The known scopes of a space-separated list, in order, without duplicates; never a write scope (a partner
    only reads: writing is for our own systems, pdex.write.access)."""
    kept: list[str] = []
    for item in scope.split():
        if scopes.is_write(item):
            item = scopes.read_part(item) or ""
        if scopes.is_known(item) and item not in kept:
            kept.append(item)
    return " ".join(kept)


@transaction.atomic
def create_partner(*, name: str, jwks: dict[str, Any] | None = None, jwks_url: str = "", scope: str = "",
                   npi: str = "", payer_id: str = "", status: str = Partner.Status.PENDING,
                   registered_via: str = "admin", software_statement: str = "", contact_name: str = "",
                   contact_email: str = "", agreement_date: date | None = None, request=None) -> Partner:
    """A partner with its DOT application. Keys are validated (InvalidKeySet names the problem)."""
    if not jwks and not jwks_url:
        raise jwks_lib.InvalidKeySet("a partner needs jwks or a jwks_url")
    cleaned = jwks_lib.validate_public_jwks(jwks) if jwks else None
    if jwks_url:
        jwks_lib.check_jwks_url(jwks_url)
    partner = Partner.objects.create(
        name=name, application=new_application(name), jwks=cleaned, jwks_url=jwks_url,
        allowed_scopes=clean_scopes(scope), npi=npi, payer_id=payer_id, status=status,
        registered_via=registered_via, software_statement=software_statement, contact_name=contact_name,
        contact_email=contact_email, agreement_date=agreement_date,
    )
    audit.record("partner-create", audit.SUCCESS, partner=partner, reason=f"registered via {registered_via}",
                 detail={"status": status}, request=request)
    return partner


def approve(partner: Partner, *, actor: str = "", request=None) -> Partner:
    """Make a pending (or suspended) partner active: it may now obtain tokens."""
    partner.status = Partner.Status.ACTIVE
    partner.save(update_fields=["status", "updated_at"])
    audit.record("partner-approve", audit.SUCCESS, partner=partner, reason=f"approved by {actor or 'admin'}",
                 request=request)
    return partner


@transaction.atomic
def suspend(partner: Partner, *, actor: str = "", reason: str = "", request=None) -> Partner:
    """Stop a partner at once: no new tokens, and its live tokens are revoked."""
    partner.status = Partner.Status.SUSPENDED
    partner.save(update_fields=["status", "updated_at"])
    tokens = AccessToken.objects.filter(application_id=partner.application_id)
    revoked = tokens.count()
    tokens.delete()
    audit.record("partner-suspend", audit.SUCCESS, partner=partner,
                 reason=reason or f"suspended by {actor or 'admin'}", detail={"tokens_revoked": revoked},
                 request=request)
    return partner
