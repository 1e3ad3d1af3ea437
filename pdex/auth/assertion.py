"""Verification of a SMART Backend Services client assertion (RFC 7523 private_key_jwt, spec §8.3).

Pure apart from the two callables it is given (client lookup, JWKS fetch), so every rule is tested
without HTTP. The jti replay check is not here: it must run only after everything else passed.

Every refusal carries two texts: `reason`, the real one, for our audit trail; and `description`, what the
client is told. The description names what is wrong with the client's own assertion (its header, and once the
signature has proved who sent it, its claims), and says nothing about our keys or other clients: anything
decided by looking a client up (unknown, inactive, no such key, bad signature) is one generic text, so an
assertion tells a caller nothing about which client ids or keys exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ExceededSizeError, JoseError
from joserfc.jws import JWSRegistry

from pdex.auth import jwks as jwks_lib
from pdex.jsonbody import parse_json

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_AUTH_FAILED = "Client authentication failed."


class AssertionRegistry(JWSRegistry):
    """joserfc's JWS rules as RFC 7515 states them for a client assertion.

    §4: header parameters that are not understood are ignored unless listed in `crit` (which we refuse), so the
    unknown-parameter check is off: node-jose clients (the SMART Bulk Data Tester among them) add `kty`, others
    `x5t` or private names. joserfc still checks the registered parameters' types and `crit`. The header may be
    larger than joserfc's default 512 bytes so that an `x5c` certificate chain fits.
    """

    max_header_length = 8192

    def __init__(self, algorithms: list[str]):
        super().__init__(algorithms=algorithms, strict_check_header=False)


class AssertionRejected(Exception):
    """The assertion does not authenticate the client.

    `reason` is for the audit trail; `description` is what the client may be told (the generic text unless the
    problem is one of the client's own header or claims).
    """

    def __init__(self, reason: str, *, client_id: str = "", description: str = CLIENT_AUTH_FAILED):
        super().__init__(reason)
        self.reason = reason
        self.client_id = client_id
        self.description = description


def _told(reason: str, description: str, *, client_id: str = "") -> AssertionRejected:
    """A refusal whose description tells the client what to change in its own assertion."""
    return AssertionRejected(reason, client_id=client_id, description=description)


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


MALFORMED = "The client_assertion is not a JWT in the JWS compact serialization."


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, before any key is touched; size limits and the header's own rules checked here."""
    registry = AssertionRegistry(list(jwks_lib.ALGORITHMS))
    try:
        compact = jws.extract_compact(assertion.encode(), registry=registry)
        claims = parse_json(compact.payload)  # the one reader: depth, U+0000, surrogates
    except ExceededSizeError as exc:
        raise _told("assertion too large", "The client_assertion is too large.") from exc
    except (JoseError, ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise _told("malformed assertion", MALFORMED) from exc
    header = compact.headers()
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise _told("malformed assertion", MALFORMED)
    return header, claims


def check_header(header: dict[str, Any]) -> tuple[str, str]:
    """`alg` and `kid` of a header that follows our rules and RFC 7515's; refusals name the header parameter."""
    alg = header.get("alg")
    if alg not in jwks_lib.ALGORITHMS:
        raise _told(f"alg {str(alg)[:16]!r} not allowed",
                    f"The client_assertion's alg must be one of {', '.join(jwks_lib.ALGORITHMS)}.")
    if str(header.get("typ", "")).upper() != "JWT":
        raise _told("typ must be JWT", "The client_assertion's typ header must be JWT.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _told("kid missing", "The client_assertion's header must name its signing key in kid.")
    if "crit" in header:
        raise _told("crit header not supported",
                    "The client_assertion's header lists crit parameters; this server understands none.")
    try:
        AssertionRegistry([alg]).check_header(header)
    except JoseError as exc:
        # joserfc's text names the registered parameter and what is wrong with its value, nothing of ours.
        raise _told(f"header: {exc.description or exc.error}"[:200],
                    f"The client_assertion's header is invalid: {exc.description or exc.error}."[:300]) from exc
    return alg, kid


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
    alg, kid = check_header(header)

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
        claims = jwt.decode(assertion, key, algorithms=[alg], registry=AssertionRegistry([alg])).claims
    except BadSignatureError as exc:
        raise AssertionRejected("bad signature", client_id=client.client_id) from exc
    except (JoseError, ValueError, TypeError) as exc:
        # The header passed check_header and the key was chosen: what is left is the key or the signature.
        raise AssertionRejected(f"not verifiable: {type(exc).__name__}", client_id=client.client_id) from exc

    # The signature proved who sent it: from here the client is told which of its claims is wrong.
    def refuse(reason: str, description: str) -> AssertionRejected:
        return _told(reason, description, client_id=client.client_id)

    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        raise refuse("iss and sub must both equal the client id",
                     "The client_assertion's iss and sub must both be the client id.")
    audience = claims.get("aud")
    if audience not in (token_url, [token_url]):
        # One audience only: an assertion also good elsewhere could be replayed here by that other audience.
        also_others = isinstance(audience, list) and token_url in audience
        raise refuse("aud names other audiences too" if also_others else "aud is not this token endpoint",
                     f"The client_assertion's aud must be the token URL {token_url}, as a string or as an array "
                     "holding only it.")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise refuse("exp missing or not an integer", "The client_assertion needs exp, an integer (seconds).")
    if exp <= now - skew:
        raise refuse("assertion expired", "The client_assertion has expired: exp is in the past.")
    if exp > now + max_lifetime + skew:
        raise refuse(f"exp more than {max_lifetime} s ahead",
                     f"The client_assertion's exp is too far ahead: at most {max_lifetime} seconds after now.")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value > now + skew):
            raise refuse(f"{name} in the future", f"The client_assertion's {name} is in the future.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise refuse("jti missing", "The client_assertion needs a jti, a string of at most 255 characters.")
    return VerifiedAssertion(client_id=client.client_id, jti=jti, exp=exp)
