"""Verification of a SMART Backend Services client assertion (RFC 7523 private_key_jwt, spec §8.3).

Pure apart from the two callables it is given (client lookup, JWKS fetch), so every rule is tested
without HTTP. The jti replay check is not here: it must run only after everything else passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from pdex.auth import jwks as jwks_lib

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class AssertionRejected(Exception):
    """The assertion does not authenticate the client. `reason` is for the audit trail, not the client."""

    def __init__(self, reason: str, *, client_id: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.client_id = client_id


@dataclass(frozen=True)
class ClientKeys:
    """What verification needs to know of a registered client."""

    client_id: str
    active: bool
    jwks: dict[str, Any] | None
    jwks_url: str


@dataclass(frozen=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    exp: int


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        compact = jws.extract_compact(assertion.encode())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise AssertionRejected("malformed assertion") from exc
    header = compact.headers()
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise AssertionRejected("malformed assertion")
    return header, claims


def _keys_for(client: ClientKeys, *, kid: str, alg: str, fetch: Callable[..., dict[str, Any]]):
    """Inline keys first, then the JWKS URL; a cached URL set is refetched once when the kid is new (rotation)."""
    if client.jwks:
        try:
            return jwks_lib.select_key(client.jwks, kid=kid, alg=alg)
        except jwks_lib.KeyNotFound:
            if not client.jwks_url:
                raise AssertionRejected("no single registered key matches kid and alg",
                                        client_id=client.client_id) from None
    if not client.jwks_url:
        raise AssertionRejected("client has no registered keys", client_id=client.client_id)
    for fresh in (False, True):
        try:
            return jwks_lib.select_key(fetch(client.jwks_url, fresh=fresh), kid=kid, alg=alg)
        except jwks_lib.KeyNotFound:
            continue
        except jwks_lib.JwksUnavailable as exc:
            raise AssertionRejected(f"JWKS URL unavailable: {exc}", client_id=client.client_id) from exc
    raise AssertionRejected("no single registered key matches kid and alg", client_id=client.client_id)


def verify_client_assertion(assertion: str, *, token_url: str, now: int,
                            find_client: Callable[[str], ClientKeys | None],
                            fetch: Callable[..., dict[str, Any]] = jwks_lib.fetch_jwks,
                            max_lifetime: int = 300, skew: int = 60) -> VerifiedAssertion:
    """Check header, key, signature and claims; AssertionRejected names the first rule broken."""
    header, unverified = unverified_parts(assertion)
    alg = header.get("alg")
    if alg not in jwks_lib.ALGORITHMS:
        raise AssertionRejected(f"alg {str(alg)[:16]!r} not allowed")
    if str(header.get("typ", "")).upper() != "JWT":
        raise AssertionRejected("typ must be JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AssertionRejected("kid missing")
    if "crit" in header:
        raise AssertionRejected("crit header not supported")

    client_id = unverified.get("iss")
    client = find_client(client_id) if isinstance(client_id, str) and client_id else None
    if client is None:
        raise AssertionRejected("unknown client")
    if not client.active:
        raise AssertionRejected("client not active", client_id=client.client_id)
    if "jku" in header and (not client.jwks_url or header["jku"] != client.jwks_url):
        raise AssertionRejected("jku differs from the registered JWKS URL", client_id=client.client_id)

    key = _keys_for(client, kid=kid, alg=alg, fetch=fetch)
    try:
        # RFC 7515 §4: header parameters that are not understood are ignored unless listed in `crit` (refused
        # above). joserfc's default registry refuses any it does not know, such as the `kty` node-jose adds.
        registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
        claims = jwt.decode(assertion, key, algorithms=[alg], registry=registry).claims
    except (JoseError, ValueError, TypeError) as exc:
        raise AssertionRejected("bad signature", client_id=client.client_id) from exc

    def refuse(reason: str) -> AssertionRejected:
        return AssertionRejected(reason, client_id=client.client_id)

    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        raise refuse("iss and sub must both equal the client id")
    audience = claims.get("aud")
    if not (audience == token_url or (isinstance(audience, list) and token_url in audience)):
        raise refuse("aud is not this token endpoint")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise refuse("exp missing or not an integer")
    if exp <= now - skew:
        raise refuse("assertion expired")
    if exp > now + max_lifetime + skew:
        raise refuse("exp more than 5 minutes ahead")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value > now + skew):
            raise refuse(f"{name} in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise refuse("jti missing")
    return VerifiedAssertion(client_id=client.client_id, jti=jti, exp=exp)
