"""Partners' public keys: validating a JWK Set, picking the one key an assertion names, fetching JWKS URLs.

SMART Backend Services (spec §8.1, §8.3): keys by value or by a TLS-protected URL; the URL is fetched with a
timeout and cached no longer than its Cache-Control allows (capped by JWKS_CACHE_MAX_SECONDS).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.cache import cache
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key

ALGORITHMS = ("RS384", "ES384")
KEY_TYPE = {"RS384": "RSA", "ES384": "EC"}
CURVE = {"ES384": "P-384"}
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 64 * 1024
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
_PUBLIC_MEMBERS = {"kty", "kid", "use", "alg", "key_ops", "n", "e", "crv", "x", "y", "x5c", "x5t", "x5t#S256"}


class InvalidKeySet(ValueError):
    """A JWK Set we will not register: the message says why (it is shown to the registering client)."""


class KeyNotFound(LookupError):
    """No single registered key fits the assertion's kid and alg."""


class JwksUnavailable(RuntimeError):
    """A JWKS URL could not be fetched or did not hold a JWK Set."""


def _modulus_bits(n: Any) -> int:
    if not isinstance(n, str):
        return 0
    try:
        return int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big").bit_length()
    except ValueError:
        return 0


def validate_public_jwks(jwks: Any) -> dict[str, Any]:
    """A cleaned JWK Set of public RS384/ES384 signing keys, or InvalidKeySet."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InvalidKeySet("jwks must be a JWK Set: an object with a non-empty 'keys' array")
    kids: set[str] = set()
    cleaned = []
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise InvalidKeySet("every entry of 'keys' must be a JWK object")
        if _PRIVATE_MEMBERS & set(jwk):
            raise InvalidKeySet("jwks must hold public keys only; never send private key material")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidKeySet("every key needs a 'kid'")
        if kid in kids:
            raise InvalidKeySet(f"kid {kid!r} appears more than once")
        kids.add(kid)
        if jwk.get("kty") not in ("RSA", "EC"):
            raise InvalidKeySet(f"key {kid!r}: kty must be RSA or EC")
        if jwk.get("kty") == "EC" and jwk.get("crv") != "P-384":
            raise InvalidKeySet(f"key {kid!r}: EC keys must use curve P-384 (ES384)")
        if jwk.get("alg") not in (None, *ALGORITHMS):
            raise InvalidKeySet(f"key {kid!r}: alg must be RS384 or ES384")
        if jwk.get("use") not in (None, "sig"):
            raise InvalidKeySet(f"key {kid!r}: use must be 'sig'")
        if jwk["kty"] == "RSA" and _modulus_bits(jwk.get("n")) < MIN_RSA_BITS:
            raise InvalidKeySet(f"key {kid!r}: RSA keys must have at least {MIN_RSA_BITS} bits")
        public = {name: value for name, value in jwk.items() if name in _PUBLIC_MEMBERS}
        try:
            import_key(public)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidKeySet(f"key {kid!r} is not a valid JWK") from exc
        cleaned.append(public)
    return {"keys": cleaned}


def select_key(jwks: dict[str, Any] | None, *, kid: str, alg: str) -> Key:
    """The one key whose kid matches and whose type fits alg (spec §8.3: zero or several → fail)."""
    if alg not in KEY_TYPE:
        raise KeyNotFound("algorithm not allowed")
    keys = (jwks or {}).get("keys")
    candidates = [
        jwk for jwk in (keys if isinstance(keys, list) else [])
        if isinstance(jwk, dict) and jwk.get("kid") == kid and jwk.get("kty") == KEY_TYPE[alg]
        and jwk.get("crv") == CURVE.get(alg) and jwk.get("alg") in (None, alg) and jwk.get("use") in (None, "sig")
        and not (_PRIVATE_MEMBERS & set(jwk))
    ]
    if len(candidates) != 1:
        raise KeyNotFound(f"{len(candidates)} keys match kid and alg")
    try:
        return import_key(candidates[0])
    except (JoseError, ValueError, TypeError) as exc:
        raise KeyNotFound("the matching key does not import") from exc


def cache_seconds(cache_control: str | None, *, default: int, cap: int) -> int:
    """How long a fetched JWKS may be kept: its max-age (never longer than cap); 0 for no-store/no-cache."""
    directives: dict[str, str] = {}
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return max(0, min(int(directives[name]), cap))
            except ValueError:
                return 0
    return max(0, min(default, cap))


def _is_internal_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_global


def check_jwks_url(url: str) -> str:
    """A JWKS URL we may fetch: https to a public host, no credentials in it.

    JWKS_ALLOW_HTTP (demos, tests) also allows http and local addresses; otherwise a partner could make
    this server fetch from its own network.
    """
    parts = urlsplit(url)
    local_ok = settings.JWKS_ALLOW_HTTP
    schemes = ("https", "http") if local_ok else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise InvalidKeySet("jwks_uri must be an https URL")
    if not local_ok and _is_internal_host(parts.hostname):
        raise InvalidKeySet("jwks_uri must name a public host")
    return url


def _cache_key(url: str) -> str:
    return "jwks:" + hashlib.sha256(url.encode()).hexdigest()


def fetch_jwks(url: str, *, fresh: bool = False) -> dict[str, Any]:
    """The JWK Set at `url`, from the shared cache unless `fresh`; JwksUnavailable when it cannot be had."""
    if not fresh:
        cached = cache.get(_cache_key(url))
        if cached is not None:
            return cached
    try:
        check_jwks_url(url)
        with requests.get(url, timeout=settings.JWKS_FETCH_TIMEOUT_SECONDS, allow_redirects=False, stream=True,
                          headers={"Accept": "application/json"}) as response:
            response.raise_for_status()
            body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            cache_control = response.headers.get("Cache-Control")
    except (requests.RequestException, InvalidKeySet, OSError) as exc:
        raise JwksUnavailable(f"fetching the JWKS failed: {type(exc).__name__}") from exc
    if len(body) > MAX_JWKS_BYTES:
        raise JwksUnavailable("the JWKS is too large")
    try:
        jwks = json.loads(body)
    except ValueError as exc:
        raise JwksUnavailable("the JWKS is not JSON") from exc
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwksUnavailable("the document is not a JWK Set")
    ttl = cache_seconds(cache_control, default=settings.JWKS_CACHE_DEFAULT_SECONDS, cap=settings.JWKS_CACHE_MAX_SECONDS)
    if ttl:
        cache.set(_cache_key(url), jwks, ttl)
    return jwks


def forget_jwks(url: str) -> None:
    cache.delete(_cache_key(url))
