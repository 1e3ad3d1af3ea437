"""RFC 7591 dynamic client registration for requesting payers.

A software statement signed by an active TrustAnchor makes the new partner active at once; without one
the partner waits, pending, until an admin approves it. Statement claims take precedence over the
plain metadata (RFC 7591 §2.3).
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key

from pdex import audit, partners
from pdex.auth import assertion as assertion_lib
from pdex.auth import jwks as jwks_lib
from pdex.models import Partner, TrustAnchor

PRIVATE_KEY_JWT = "private_key_jwt"
# Client metadata a software statement may set (RFC 7591 §2 plus our payer identifiers).
STATEMENT_FIELDS = ("client_name", "jwks", "jwks_uri", "scope", "token_endpoint_auth_method", "grant_types",
                    "contacts", "software_id", "software_version", "npi", "payer_id")


class RegistrationError(Exception):
    """An RFC 7591 error: `error` is the code, `description` is safe to show the client."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


def invalid_metadata(description: str) -> RegistrationError:
    return RegistrationError("invalid_client_metadata", description)


def _anchor_key(kid: str, alg: str) -> tuple[TrustAnchor, Key]:
    """The key of an active trust anchor named by kid; unapproved when no anchor has it."""
    found: list[tuple[TrustAnchor, Key]] = []
    for anchor in TrustAnchor.objects.filter(active=True):
        key_sets = [anchor.jwks] if anchor.jwks else []
        if anchor.jwks_url:
            try:
                key_sets.append(jwks_lib.fetch_jwks(anchor.jwks_url))
            except jwks_lib.JwksUnavailable:
                continue
        for key_set in key_sets:
            try:
                found.append((anchor, jwks_lib.select_key(key_set, kid=kid, alg=alg)))
                break
            except jwks_lib.KeyNotFound:
                continue
    if not found:
        raise RegistrationError("unapproved_software_statement",
                                "The software statement is not signed by an issuer this server trusts.")
    if len(found) > 1:
        raise RegistrationError("invalid_software_statement", "The software statement's key is ambiguous.")
    return found[0]


def verify_software_statement(statement: Any, *, now: int, skew: int = 60) -> tuple[TrustAnchor, dict[str, Any]]:
    """The trust anchor that signed the statement and its claims, or RegistrationError."""
    bad = RegistrationError("invalid_software_statement", "The software statement is invalid.")
    if not isinstance(statement, str):
        raise bad
    try:
        header, _ = assertion_lib.unverified_parts(statement)
    except assertion_lib.AssertionRejected:
        raise bad from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in jwks_lib.ALGORITHMS or not isinstance(kid, str) or not kid or "crit" in header:
        raise bad
    anchor, key = _anchor_key(kid, alg)
    try:
        claims = jwt.decode(statement, key, algorithms=[alg], registry=assertion_lib.AssertionRegistry([alg])).claims
    except (JoseError, ValueError, TypeError):
        raise bad from None
    if not isinstance(claims.get("iss"), str) or not claims["iss"]:
        raise bad
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if exp is not None and (not isinstance(exp, (int, float)) or exp <= now - skew):
        raise bad
    for value in (iat, nbf):
        if value is not None and (not isinstance(value, (int, float)) or value > now + skew):
            raise bad
    return anchor, claims


def _contact_email(contacts: Any) -> str:
    if isinstance(contacts, list):
        return next((c for c in contacts if isinstance(c, str) and "@" in c and len(c) <= 254), "")
    return ""


def validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Normalized client metadata, or invalid_client_metadata naming the field at fault."""
    name = metadata.get("client_name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise invalid_metadata("client_name is required (at most 200 characters)")
    if metadata.get("token_endpoint_auth_method") != PRIVATE_KEY_JWT:
        raise invalid_metadata("token_endpoint_auth_method must be private_key_jwt")
    grant_types = metadata.get("grant_types", ["client_credentials"])
    if grant_types != ["client_credentials"]:
        raise invalid_metadata("grant_types must be [\"client_credentials\"]")
    key_set, key_url = metadata.get("jwks"), metadata.get("jwks_uri")
    if (key_set is None) == (key_url is None):
        raise invalid_metadata("exactly one of jwks and jwks_uri is required")
    try:
        key_set = jwks_lib.validate_public_jwks(key_set) if key_set is not None else None
        if key_url is not None:
            if not isinstance(key_url, str) or len(key_url) > 500:
                raise jwks_lib.InvalidKeySet("jwks_uri must be an https URL")
            jwks_lib.check_jwks_url(key_url)
    except jwks_lib.InvalidKeySet as exc:
        raise invalid_metadata(str(exc)) from None
    scope = metadata.get("scope")
    if not isinstance(scope, str) or not partners.clean_scopes(scope):
        raise invalid_metadata("scope must name at least one scope this server supports")
    npi = metadata.get("npi", "")
    if not isinstance(npi, str) or (npi and not (npi.isdigit() and len(npi) == 10)):
        raise invalid_metadata("npi must be 10 digits")
    payer_id = metadata.get("payer_id", "")
    if not isinstance(payer_id, str) or len(payer_id) > 64:
        raise invalid_metadata("payer_id must be a string of at most 64 characters")
    return {
        "client_name": name.strip(), "jwks": key_set, "jwks_uri": key_url or "",
        "scope": partners.clean_scopes(scope), "npi": npi, "payer_id": payer_id,
        "contact_email": _contact_email(metadata.get("contacts")),
    }


def register_client(metadata: Any, *, request=None, now: int | None = None) -> dict[str, Any]:
    """Register a partner from RFC 7591 metadata; the 201 response body, or RegistrationError."""
    now = int(time.time()) if now is None else now
    try:
        if not isinstance(metadata, dict):
            raise invalid_metadata("the body must be a JSON object of client metadata")
        statement = metadata.get("software_statement")
        anchor = None
        if statement is not None:
            anchor, claims = verify_software_statement(statement, now=now, skew=settings.CLIENT_ASSERTION_CLOCK_SKEW)
            metadata = {**metadata, **{name: claims[name] for name in STATEMENT_FIELDS if name in claims}}
        clean = validate_metadata(metadata)
    except RegistrationError as exc:
        audit.record("register", audit.REFUSED, reason=exc.error, detail={"description": exc.description},
                     request=request)
        raise
    status = Partner.Status.ACTIVE if anchor else Partner.Status.PENDING
    partner = partners.create_partner(
        name=clean["client_name"], jwks=clean["jwks"], jwks_url=clean["jwks_uri"], scope=clean["scope"],
        npi=clean["npi"], payer_id=clean["payer_id"], contact_email=clean["contact_email"], status=status,
        registered_via="dcr", software_statement=statement or "", request=request,
    )
    audit.record("register", audit.SUCCESS, partner=partner,
                 reason=f"trusted software statement from {anchor.name}" if anchor else "pending admin approval",
                 detail={"status": status, "trust_anchor": anchor.pk if anchor else None}, request=request)
    response: dict[str, Any] = {
        "client_id": partner.client_id,
        "client_id_issued_at": int(partner.created_at.timestamp()),
        "client_name": partner.name,
        "token_endpoint_auth_method": PRIVATE_KEY_JWT,
        "grant_types": ["client_credentials"],
        "scope": partner.allowed_scopes,
    }
    if partner.jwks:
        response["jwks"] = partner.jwks
    if partner.jwks_url:
        response["jwks_uri"] = partner.jwks_url
    if statement:
        response["software_statement"] = statement
    return response
