"""The requesting side of SMART Backend Services: sign a client assertion, get a token.

Used by the requesting-payer client, the tests, the benches and the demo. Nothing here touches the
database: it needs only the discovery document (or token URL), a client id and a private JWK.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import lru_cache
from typing import Any

import requests
from joserfc import jwt
from joserfc.jwk import Key, import_key

from pdex.auth.assertion import ASSERTION_TYPE, AssertionRegistry


class TokenRequestFailed(RuntimeError):
    """The token endpoint refused: `error` is its RFC 6749 error code."""

    def __init__(self, status: int, error: str, description: str = ""):
        super().__init__(f"token request refused ({status} {error}): {description}")
        self.status = status
        self.error = error
        self.description = description


@lru_cache(maxsize=32)
def _private_key(jwk_json: str) -> Key:
    """Importing an RSA private key costs ~0.2 s (cryptography checks it); a client signs many assertions."""
    return import_key(json.loads(jwk_json))


def make_client_assertion(private_jwk: dict[str, Any], client_id: str, token_url: str, *, alg: str | None = None,
                          lifetime: int = 240, now: int | None = None, jti: str | None = None,
                          jku: str | None = None, kid: str | None = None,
                          extra_header: dict[str, Any] | None = None, aud: Any = None) -> str:
    """A signed client assertion (spec §8.3): iss = sub = client id, aud = token URL, short exp, fresh jti.

    `extra_header` adds JOSE header parameters (as other clients' libraries do: `kty`, `x5t`, …); `aud`
    replaces the audience (tests of what the server refuses).
    """
    key = _private_key(json.dumps(private_jwk, sort_keys=True))
    alg = alg or private_jwk.get("alg") or ("ES384" if private_jwk.get("kty") == "EC" else "RS384")
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid or private_jwk["kid"], **(extra_header or {})}
    if jku:
        header["jku"] = jku
    now = int(time.time()) if now is None else now
    claims = {"iss": client_id, "sub": client_id, "aud": token_url if aud is None else aud, "exp": now + lifetime,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode(header, claims, key, algorithms=[alg], registry=AssertionRegistry([alg]))


def token_form(assertion: str, scopes: str | list[str]) -> dict[str, str]:
    """The form-encoded body of a client-credentials token request."""
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scopes if isinstance(scopes, str) else " ".join(scopes),
    }


def discover(fhir_base_url: str, *, timeout: float = 10, session: requests.Session | None = None) -> dict[str, Any]:
    """The server's SMART configuration (token and registration endpoints, algorithms, scopes)."""
    response = (session or requests).get(f"{fhir_base_url.rstrip('/')}/.well-known/smart-configuration",
                                         headers={"Accept": "application/json"}, timeout=timeout)
    response.raise_for_status()
    return response.json()


def request_token(token_url: str, client_id: str, private_jwk: dict[str, Any], scopes: str | list[str], *,
                  timeout: float = 10, session: requests.Session | None = None,
                  jku: str | None = None) -> dict[str, Any]:
    """POST a fresh assertion to the token endpoint; the token response, or TokenRequestFailed."""
    assertion = make_client_assertion(private_jwk, client_id, token_url, jku=jku)
    response = (session or requests).post(token_url, data=token_form(assertion, scopes), timeout=timeout,
                                          headers={"Accept": "application/json"})
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or "access_token" not in body:
        raise TokenRequestFailed(response.status_code, str(body.get("error", "unknown")),
                                 str(body.get("error_description", "")))
    return body
