"""Rate limits of the OAuth endpoints (`/oauth/token`, `/oauth/register`): fixed windows counted in Redis.

Django's cache is Redis here, as for the jti replay cache. A window's counter is opened with `cache.add`
(SET NX EX) and counted with `cache.incr` (INCR), both atomic in Redis, so any number of web processes
together admit at most the limit per window. Each key's window starts at an offset of its own (a hash of
the key), so clients do not all get their budget back at the same second.

Why not django-ratelimit: it is these same two cache calls behind a view decorator that answers 403 and keys
on what the request shows before the view runs. The token endpoint counts a client only once its assertion's
signature proved who it is (counting the unverified `iss` would let anyone spend another client's budget), and
both endpoints answer 429 with `Retry-After` and an RFC 6749 body, so the decorator would go unused and the
library would add a dependency for a dozen lines.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest


@dataclass(frozen=True)
class Limit:
    """At most `count` requests per `seconds`, per subject (a client id, a source address)."""

    name: str  # e.g. "token-client"
    count: int
    seconds: int


@dataclass(frozen=True)
class Usage:
    allowed: bool
    retry_after: int  # seconds until this subject's window ends


def token_per_client() -> Limit:
    return Limit("token-client", settings.TOKEN_RATE_PER_CLIENT, settings.OAUTH_RATE_WINDOW_SECONDS)


def token_per_address() -> Limit:
    return Limit("token-address", settings.TOKEN_RATE_PER_ADDRESS, settings.OAUTH_RATE_WINDOW_SECONDS)


def register_per_address() -> Limit:
    return Limit("register-address", settings.REGISTER_RATE_PER_ADDRESS, settings.REGISTER_RATE_WINDOW_SECONDS)


def source_address(request: HttpRequest) -> str:
    """The caller's address: REMOTE_ADDR, or the last hop of CLIENT_ADDRESS_HEADER that our own proxy appends."""
    header = settings.CLIENT_ADDRESS_HEADER
    if header:
        forwarded = request.headers.get(header, "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1][:64]
    return request.META.get("REMOTE_ADDR") or "unknown"


def hit(limit: Limit, subject: str, *, now: float | None = None) -> Usage:
    """Count one request of `subject` against `limit`; `allowed` is False once the window's count is over."""
    if limit.count <= 0:
        return Usage(True, 0)
    now = time.time() if now is None else now
    digest = hashlib.sha256(f"{limit.name}\0{subject}".encode()).digest()
    seconds = max(limit.seconds, 1)
    offset = int.from_bytes(digest[:4], "big") % seconds
    slot = int((now - offset) // seconds)
    retry_after = max(int(offset + (slot + 1) * seconds - now) + 1, 1)
    key = f"ratelimit:{limit.name}:{digest[:16].hex()}:{slot}"
    cache.add(key, 0, timeout=seconds + 1)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr: this request opens the window
        cache.add(key, 1, timeout=seconds + 1)
        count = 1
    return Usage(count <= limit.count, retry_after)
