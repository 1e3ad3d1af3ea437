"""The one reader of JSON request bodies: every DRF JSON parser (pdex.renderers) and the OAuth views read through it;
pdex.fhir exposes it with FHIR errors.

Why our own and not `json.loads` alone: Python's parser turns about 1,000 levels of nesting into a
RecursionError (a 500), accepts any size it is handed, and happily returns U+0000 and lone surrogates, which
PostgreSQL (text, jsonb) and UTF-8 encoders refuse later, far from the request. The rules here are the edge's:

- at most `DATA_UPLOAD_MAX_MEMORY_SIZE` bytes (413 beyond; the declared Content-Length is checked before reading),
- at most `MAX_DEPTH` levels of arrays and objects (checked on the raw text before parsing),
- strict UTF-8, no NaN/Infinity, no number that is not finite,
- no U+0000 and no lone surrogate in any string or key.

Kept free of DRF imports: DRF imports the parsers while it builds APIView, before pdex.fhir can be imported.
"""

from __future__ import annotations

import array
import gc
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

from django.conf import settings

MAX_DEPTH = 64
# What is left of the text once escapes are gone: quotes and brackets (a string's brackets are text, not depth).
_NOT_QUOTES_OR_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
# A string literal in that residue: its quotes and whatever brackets it held.
_STRING = re.compile(rb'"[^"]*"')
# Opening brackets to 1, closing ones to -1 as signed bytes: their running sum is the depth.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# Escapes that may decode to U+0000 or to a surrogate: only then are the parsed strings looked at one by one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


class BodyError(ValueError):
    """A request body we refuse: `status` 400 (not JSON we accept) or 413 (too large)."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def max_body_bytes() -> int:
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) or 50 * 1024 * 1024


def read_body(stream: Any, *, content_length: Any = None, limit: int | None = None) -> bytes:
    """The raw body from a file-like `stream` (a Django request, a BytesIO), refusing more than `limit` bytes."""
    limit = max_body_bytes() if limit is None else limit
    try:
        declared = int(content_length or 0)
    except (TypeError, ValueError):
        declared = 0
    if declared > limit:
        raise BodyError(f"The request body is larger than {limit} bytes.", status=413)
    if stream is None:
        return b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BodyError(f"The request body is larger than {limit} bytes.", status=413)
    return data


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, strings left out.

    Done in C passes over bytes rather than a string-matching regex (a 17 MB body: 50 ms, not 250): escapes go
    first (escaped backslashes, then escaped quotes; outside strings valid JSON has none), then everything but
    quotes and brackets, then pairs of adjacent quotes — the strings that held no bracket, nearly all of them,
    and dropping two adjacent quotes leaves every bracket on its side of the strings. The few strings left are
    cut out by a regex on a residue of a few bytes, and the brackets' running sum is the depth. For text that
    is not JSON the figure may be wrong; the parser refuses such text anyway.
    """
    residue = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_QUOTES_OR_BRACKETS)
    brackets = _STRING.sub(b"", residue.replace(b'""', b""))
    return max(accumulate(array.array("b", brackets.translate(_STEPS))), default=0)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a large document is built: parsing allocates millions of objects, and
    every few hundred allocations the collector walks them looking for cycles JSON cannot make (half of a 15 MB
    body's parse time). Reference counting still frees everything; whichever caller found it on turns it on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"The number {text[:40]} is out of range.")
    return value


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON.")


def _bad_strings(value: Any) -> bool:
    """Whether any string or key holds U+0000 or a lone surrogate (iteratively: depth is bounded, size is not)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item or (not item.isascii() and _has_surrogate(item)):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json(data: bytes) -> Any:
    """JSON text → Python values under the rules above; BodyError when refused."""
    if len(data) > max_body_bytes():
        raise BodyError(f"The request body is larger than {max_body_bytes()} bytes.", status=413)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("The request body is not valid UTF-8.") from None
    if "\x00" in text:
        raise BodyError("The request body contains U+0000.")
    if nesting_depth(data) > MAX_DEPTH:
        raise BodyError(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    try:
        with gc_paused():
            value = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
    except BodyError:
        raise
    except (ValueError, RecursionError) as error:
        raise BodyError(f"The request body is not valid JSON: {str(error)[:200]}") from None
    if _SUSPECT_ESCAPE.search(text) and _bad_strings(value):
        raise BodyError("The JSON holds U+0000 or a lone surrogate, which this server does not accept.")
    return value


def read_json(stream: Any, *, content_length: Any = None) -> Any:
    """Read and parse a JSON body from `stream` (size checked first); BodyError when refused."""
    return parse_json(read_body(stream, content_length=content_length))
