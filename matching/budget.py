"""The member-match failure budget: one per partner, shared by `$member-match` and `$bulk-member-match`.

A partner may have at most `MEMBER_MATCH_MAX_FAILURES` (or its own `Partner.match_failure_budget`, set by an
admin) members not matched (no match, several, consent that cannot be complied with, unreadable) per
`MEMBER_MATCH_FAILURE_WINDOW_SECONDS` (a fixed window). Guessing is
what the budget bounds, so it is spent *before* anything is evaluated: a request reserves one failure per
member it submits (one for `$member-match`, the MemberBundle count for a bulk request) and is refused with 429
and `Retry-After` when the reservation does not fit; each member that matches gives its failure back (the
single request at once, a bulk request's batches as they are recorded). However many web processes and
requests run at once, no more than the budget of failures is ever admitted in a window.

Reserve and refund are each one Lua script in Redis (the Django cache's own connection and key prefix), so a
check and its increment can never be split by another request — the previous GET-then-INCR let 22 failures
through a limit of 20 under concurrency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from pdex.models import Partner

# KEYS[1] the window's counter; ARGV: members, limit, ttl. The new count, or -1 when it does not fit.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if used + wanted > tonumber(ARGV[2]) then return -1 end
used = redis.call('INCRBY', KEYS[1], wanted)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return used
"""
# A refund only into a window still open (its key exists), never below zero.
_REFUND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '-1')
if used < 0 then return 0 end
local back = math.min(used, tonumber(ARGV[1]))
if back > 0 then redis.call('DECRBY', KEYS[1], back) end
return back
"""


@dataclass(frozen=True)
class Reservation:
    """Failures reserved in one window: `allowed` False (and nothing reserved) when they did not fit."""

    allowed: bool
    key: str
    retry_after: int
    used: int


def window_key(partner: Partner, moment: float) -> tuple[str, int]:
    """The counter of the window holding `moment` (epoch seconds), and the seconds until that window ends."""
    window = max(settings.MEMBER_MATCH_FAILURE_WINDOW_SECONDS, 1)
    slot = int(moment // window)
    return f"member-match-budget:{partner.pk}:{slot}", int(window - moment % window) + 1


def failure_limit(partner: Partner) -> int:
    """The partner's own budget where an admin set one (a large trusted population), else the deployment's."""
    if partner.match_failure_budget is not None:
        return partner.match_failure_budget
    return settings.MEMBER_MATCH_MAX_FAILURES


def _client():
    return cache._cache.get_client(write=True)  # the cache's own Redis connection, for a script


def reserve(partner: Partner, members: int, *, now: float | None = None) -> Reservation:
    """Spend `members` failures of the partner's budget now, or none if they do not all fit."""
    key, retry_after = window_key(partner, time.time() if now is None else now)
    limit = failure_limit(partner)
    used = _client().eval(_RESERVE, 1, cache.make_key(key), members, limit, retry_after + 1)
    return Reservation(allowed=used >= 0, key=key, retry_after=retry_after, used=int(used))


def refund(partner: Partner, members: int, *, reserved_at: datetime | float | None = None) -> int:
    """Give back `members` failures reserved at `reserved_at` (members that matched); how many were given back."""
    if members <= 0:
        return 0
    moment = reserved_at.timestamp() if isinstance(reserved_at, datetime) else reserved_at
    key, _ = window_key(partner, time.time() if moment is None else moment)
    return int(_client().eval(_REFUND, 1, cache.make_key(key), members))


def used(partner: Partner, *, now: float | None = None) -> int:
    """Failures spent in the current window (for tests and the admin)."""
    key, _ = window_key(partner, time.time() if now is None else now)
    return int(cache.get(key) or 0)
