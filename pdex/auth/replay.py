"""The jti replay cache: an assertion's jti is accepted once per client while the assertion lives.

It lives in Redis (the Django cache) and uses an atomic set-if-absent (SET NX EX), so two web processes
racing on the same assertion cannot both win.
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache


def _key(client_id: str, jti: str) -> str:
    return "jti:" + hashlib.sha256(f"{client_id}\0{jti}".encode()).hexdigest()


def remember_jti(client_id: str, jti: str, *, ttl: int) -> bool:
    """True the first time (client_id, jti) is seen within `ttl` seconds; False for a replay."""
    return bool(cache.add(_key(client_id, jti), 1, timeout=max(1, int(ttl))))
