"""The one reader of FHIR dates in requests (search parameters, `start`/`end`, `_since`, `_typeFilter` dates).

A date the client sends becomes a [start, end) range of aware UTC datetimes at its precision. Whatever Python
cannot hold — year 0, year 9999's end (10000-01-01), an offset that carries the moment past either end — is a
400 here, never an OverflowError later; the range also stays a day inside Python's limits, so the arithmetic
the callers do on it (a microsecond off an end, a comparison in UTC) cannot overflow. PostgreSQL's timestamptz
(4713 BC to 294276 AD) holds everything that passes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta

from pdex.fhir import BadRequest

DATE_VALUE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
                        r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def _representable(value: str, *moments: datetime) -> None:
    if any(not EARLIEST <= m <= LATEST for m in moments):
        raise BadRequest(f"'{value[:40]}' is outside the dates this server can represent.", code="value")


def date_range(value: str) -> tuple[datetime, datetime]:
    """[start, end) of a FHIR date/dateTime at its precision; 400 for anything else."""
    match = DATE_VALUE.match(value)
    if not match:
        raise BadRequest(f"'{value[:40]}' is not a FHIR date or dateTime.", code="value")
    year, month, day, hour, _minute, second, zone = match.groups()
    if hour is not None and zone is None:
        raise BadRequest(f"'{value}' has a time but no time zone.", code="value")
    try:
        if hour is None:
            start = datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
            step = relativedelta(days=1) if day else relativedelta(months=1) if month else relativedelta(years=1)
            end = start + step
        else:
            start = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
            end = start + (relativedelta(seconds=1) if second is not None else relativedelta(minutes=1))
    except (ValueError, OverflowError) as error:
        raise BadRequest(f"'{value[:40]}' is not a valid date: {error}.", code="value") from None
    _representable(value, start, end)
    return start, end


def parse_instant(name: str, value: str) -> datetime:
    """A FHIR instant (seconds and a zone required), as an aware datetime at its own offset; 400 otherwise."""
    if not INSTANT.match(value or ""):
        raise BadRequest(f"{name} must be a FHIR instant such as 2024-01-01T00:00:00Z; got '{str(value)[:40]}'.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        _representable(value, moment.astimezone(UTC))
    except (ValueError, OverflowError):
        raise BadRequest(f"{name} '{value[:40]}' is not a valid instant.") from None
    return moment
