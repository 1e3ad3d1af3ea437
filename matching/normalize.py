"""Normalizing names, postal codes and genders before they are compared (both sides, every time)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_NOT_LETTERS = re.compile(r"[^a-z ]+")
_SPACES = re.compile(r"\s+")

# A few common English nicknames: with a member-id hit they confirm the given name (never on their own).
NICKNAMES = {
    "bill": "william", "billy": "william", "will": "william", "willy": "william", "liam": "william",
    "bob": "robert", "bobby": "robert", "rob": "robert", "robbie": "robert", "bert": "robert",
    "jim": "james", "jimmy": "james", "jamie": "james", "mike": "michael", "mikey": "michael",
    "dick": "richard", "rick": "richard", "ricky": "richard", "rich": "richard",
    "tom": "thomas", "tommy": "thomas", "joe": "joseph", "joey": "joseph", "dan": "daniel", "danny": "daniel",
    "dave": "david", "chris": "christopher", "steve": "steven", "tony": "anthony", "andy": "andrew",
    "drew": "andrew", "ed": "edward", "eddie": "edward", "ted": "edward", "sam": "samuel", "ben": "benjamin",
    "matt": "matthew", "nick": "nicholas", "alex": "alexander", "greg": "gregory", "jeff": "jeffrey",
    "jon": "jonathan", "jack": "john", "johnny": "john", "larry": "lawrence", "pat": "patricia",
    "patty": "patricia", "trish": "patricia", "liz": "elizabeth", "beth": "elizabeth", "betty": "elizabeth",
    "lizzie": "elizabeth", "kate": "katherine", "katie": "katherine", "kathy": "katherine", "cathy": "catherine",
    "peggy": "margaret", "maggie": "margaret", "meg": "margaret", "sue": "susan", "susie": "susan",
    "jen": "jennifer", "jenny": "jennifer", "debbie": "deborah", "deb": "deborah", "barb": "barbara",
    "cindy": "cynthia", "mandy": "amanda", "becky": "rebecca", "vicky": "victoria", "abby": "abigail",
}


def name(value: Any) -> str:
    """Lower case, accents stripped, letters only (Synthea's digits go), single spaces."""
    if not isinstance(value, str):
        return ""
    text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    text = _NOT_LETTERS.sub(" ", text.replace("'", ""))
    return _SPACES.sub(" ", text).strip()


def given_names(values: Any) -> str:
    if isinstance(values, str):
        return name(values)
    return " ".join(part for part in (name(v) for v in values or []) if part)


def canonical_given(first: str) -> str:
    return NICKNAMES.get(first, first)


def postal_code(value: Any) -> str:
    """US ZIP: the first five digits; other formats: alphanumerics, upper case."""
    if not isinstance(value, str):
        return ""
    digits = re.sub(r"\D", "", value)
    if len(digits) in (5, 9) and re.fullmatch(r"[\d\s-]+", value.strip()):
        return digits[:5]
    return re.sub(r"[^A-Z0-9]", "", value.upper())


def gender(value: Any) -> str:
    return value.lower() if isinstance(value, str) and value.lower() in ("male", "female") else ""


def official_name(patient: Mapping[str, Any]) -> Mapping[str, Any]:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    for entry in names:
        if entry.get("use") == "official":
            return entry
    return names[0] if names else {}
