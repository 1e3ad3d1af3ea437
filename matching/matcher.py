"""The member matcher: pure, precision first (docs/matching.md has the rules and thresholds).

A wrong match discloses another person's data, so: identifiers find candidates, demographics must
confirm them; an identifier hit whose demographics disagree is no match; a tie is "several";
demographics alone match only when unique and strong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from rapidfuzz import fuzz

from matching import normalize
from matching.parameters import MatchRequest, problems
from pdex.extract import parse_fhir_date
from pdex.identity import MB, OurIdentity, is_typed, payor_names_us

UMB = ("http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "UMB")

# Confirmation of an identifier hit (names may carry typos, nicknames, or be swapped).
CONFIRM_FAMILY = 85
CONFIRM_GIVEN = 75
CONFIRM_SWAPPED = 90
# Demographics alone: exact normalized family and first given name, gender and postal code present and equal.
STRONG_FAMILY = 100
STRONG_GIVEN = 100


class Outcome(StrEnum):
    MATCH = "match"
    NONE = "none"
    SEVERAL = "several"


@dataclass(frozen=True)
class Candidate:
    """One of our members as plain data (a Member row's matching columns)."""

    id: int
    fhir_id: str
    umb: str
    member_number: str
    subscriber_id: str
    family: str
    given: str
    birth_date: date | None
    gender: str
    postal_code: str


@dataclass(frozen=True)
class Submitted:
    """What the requester told us about the member, normalized; the keys candidates are looked up by."""

    family: str
    given: str
    birth_date: date | None
    gender: str
    postal_codes: frozenset[str]
    member_numbers: frozenset[str]
    subscriber_ids: frozenset[str]
    umbs: frozenset[str]
    payor_is_us: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchResult:
    outcome: Outcome
    member_id: int | None = None
    score: int = 0
    reasons: tuple[str, ...] = ()


def submitted_from(request: MatchRequest, ours: OurIdentity) -> Submitted:
    """Pull the matching keys out of the submitted Patient and CoverageToMatch (docs/matching.md, step 2).

    The CoverageToMatch is the member's coverage with us (its payor must name us, or nothing matches): an
    identifier typed MB on it is the member id from our card, whatever system the new plan put on it (it
    cannot know ours); an untyped one counts only with our system or none. On the Patient, UMB identifiers
    are ours and an MB one only with our system: otherwise it is the requester's own member number.
    """
    patient = request.patient
    entry = normalize.official_name(patient)
    member_numbers: set[str] = set()
    subscriber_ids: set[str] = set()
    umbs: set[str] = set()
    coverage = request.coverage_to_match or {}
    for identifier in coverage.get("identifier") or []:
        if not isinstance(identifier, dict) or not identifier.get("value"):
            continue
        ours_by_system = identifier.get("system") in (None, "", ours.member_id_system)
        if is_typed(identifier, MB) or (ours_by_system and not identifier.get("type")):
            member_numbers.add(str(identifier["value"]))
    if isinstance(coverage.get("subscriberId"), str) and coverage["subscriberId"]:
        subscriber_ids.add(coverage["subscriberId"])
    for identifier in patient.get("identifier") or []:
        if not isinstance(identifier, dict) or not identifier.get("value"):
            continue
        if is_typed(identifier, UMB):
            umbs.add(str(identifier["value"]))
        elif is_typed(identifier, MB) and identifier.get("system") == ours.member_id_system:
            member_numbers.add(str(identifier["value"]))
    postal_codes = {normalize.postal_code(a.get("postalCode")) for a in patient.get("address") or []
                    if isinstance(a, dict)} - {""}
    return Submitted(
        family=normalize.name(entry.get("family")), given=normalize.given_names(entry.get("given")),
        birth_date=parse_fhir_date(patient.get("birthDate")), gender=normalize.gender(patient.get("gender")),
        postal_codes=frozenset(postal_codes), member_numbers=frozenset(member_numbers),
        subscriber_ids=frozenset(subscriber_ids), umbs=frozenset(umbs),
        payor_is_us=payor_names_us(coverage, ours), problems=tuple(problems(request)),
    )


def _first(given: str) -> str:
    return given.split(" ", 1)[0] if given else ""


def _given_score(submitted: str, ours: str) -> int:
    if not submitted or not ours:
        return 0
    first, our_first = _first(submitted), _first(ours)
    if normalize.canonical_given(first) == normalize.canonical_given(our_first):
        return 100
    return int(max(fuzz.ratio(first, our_first), fuzz.token_set_ratio(submitted, ours)))


def _family_score(submitted: str, ours: str) -> int:
    if not submitted or not ours:
        return 0
    return int(max(fuzz.ratio(submitted, ours), fuzz.token_set_ratio(submitted, ours)))


@dataclass(frozen=True)
class _Comparison:
    birth_date: bool
    family: int
    given: int
    swapped: bool
    gender_conflict: bool
    gender_equal: bool
    postal_equal: bool
    postal_known: bool

    @property
    def score(self) -> int:
        names = 100 if self.swapped else (self.family + self.given) // 2
        return (4 * names) // 10 + 40 * self.birth_date + 10 * self.gender_equal + 10 * self.postal_equal

    def reasons(self) -> list[str]:
        found = [f"family {self.family}", f"given {self.given}"]
        found += ["birth-date" if self.birth_date else "birth-date-differs"]
        found += ["names-swapped"] * self.swapped + ["gender-conflict"] * self.gender_conflict
        found += ["postal"] * self.postal_equal
        return found


def compare(submitted: Submitted, candidate: Candidate) -> _Comparison:
    family = _family_score(submitted.family, candidate.family)
    given = _given_score(submitted.given, candidate.given)
    swapped = (family < CONFIRM_FAMILY
               and fuzz.ratio(submitted.family, _first(candidate.given)) >= CONFIRM_SWAPPED
               and fuzz.ratio(_first(submitted.given), candidate.family) >= CONFIRM_SWAPPED)
    genders = bool(submitted.gender and candidate.gender)
    return _Comparison(
        birth_date=submitted.birth_date is not None and submitted.birth_date == candidate.birth_date,
        family=family, given=given, swapped=swapped,
        gender_conflict=genders and submitted.gender != candidate.gender,
        gender_equal=genders and submitted.gender == candidate.gender,
        postal_equal=bool(candidate.postal_code) and candidate.postal_code in submitted.postal_codes,
        postal_known=bool(candidate.postal_code and submitted.postal_codes),
    )


def confirms(c: _Comparison) -> bool:
    """Demographics agree with an identifier hit: same birth date, names close, no gender conflict."""
    names = (c.family >= CONFIRM_FAMILY and c.given >= CONFIRM_GIVEN) or c.swapped
    return c.birth_date and names and not c.gender_conflict


def strong(c: _Comparison, submitted: Submitted, candidate: Candidate) -> bool:
    """Enough to match on demographics alone."""
    return (c.birth_date and c.family >= STRONG_FAMILY
            and fuzz.ratio(_first(submitted.given), _first(candidate.given)) >= STRONG_GIVEN
            and c.gender_equal and c.postal_equal)


def _result(outcome: Outcome, reasons: list[str], member: Candidate | None = None, score: int = 0) -> MatchResult:
    return MatchResult(outcome, member.id if member else None, score, tuple(reasons))


def match(submitted: Submitted, candidates: Iterable[Candidate]) -> MatchResult:
    """Exactly one member, none, or several — with a score and the reasons (no demographics in them)."""
    if submitted.problems:
        return _result(Outcome.NONE, ["input-not-conformant"])
    if not submitted.payor_is_us:
        return _result(Outcome.NONE, ["payor-not-us"])
    candidates = {c.id: c for c in candidates}.values()
    person_hits = [c for c in candidates
                   if c.umb in submitted.umbs or (c.member_number and c.member_number in submitted.member_numbers)]
    subscriber_hits = [c for c in candidates if c.subscriber_id and c.subscriber_id in submitted.subscriber_ids
                       and c not in person_hits]
    if person_hits or subscriber_hits:
        return _by_identifier(submitted, person_hits, subscriber_hits)
    return _by_demographics(submitted, [c for c in candidates if c.birth_date == submitted.birth_date])


def _by_identifier(submitted: Submitted, person_hits: list[Candidate],
                   subscriber_hits: list[Candidate]) -> MatchResult:
    for hits, via in ((person_hits, "member-id"), (subscriber_hits, "subscriber-id")):
        if not hits:
            continue
        compared = [(c, compare(submitted, c)) for c in hits]
        confirmed = [(c, cmp) for c, cmp in compared if confirms(cmp)]
        if len(confirmed) == 1:
            member, cmp = confirmed[0]
            return _result(Outcome.MATCH, [via, *cmp.reasons()], member, cmp.score)
        if len(confirmed) > 1:
            return _result(Outcome.SEVERAL, [via, f"tie of {len(confirmed)}"])
        if via == "member-id":
            # A member id that names someone else's demographics: never fall back to weaker evidence.
            best = max(cmp.score for _, cmp in compared)
            return _result(Outcome.NONE, [via, "demographics-disagree"], score=best)
    return _result(Outcome.NONE, ["subscriber-id", "demographics-disagree"])


def _by_demographics(submitted: Submitted, same_birth_date: list[Candidate]) -> MatchResult:
    if not same_birth_date:
        return _result(Outcome.NONE, ["no-candidate"])
    compared = [(c, compare(submitted, c)) for c in same_birth_date]
    plausible = [(c, cmp) for c, cmp in compared if confirms(cmp)]
    if len(plausible) > 1:
        return _result(Outcome.SEVERAL, ["demographics-only", f"tie of {len(plausible)}"])
    if len(plausible) == 1:
        member, cmp = plausible[0]
        if strong(cmp, submitted, member):
            return _result(Outcome.MATCH, ["demographics-only", *cmp.reasons()], member, cmp.score)
        return _result(Outcome.NONE, ["demographics-only", "not-strong-enough"], score=cmp.score)
    return _result(Outcome.NONE, ["demographics-only", "no-candidate-agrees"])


def candidate_from_row(row: Mapping[str, Any]) -> Candidate:
    """A Candidate from `Member.objects.values(*CANDIDATE_FIELDS)`, normalized again in case ingest did not."""
    fields = {name: row[name] for name in CANDIDATE_FIELDS}
    fields.update(family=normalize.name(row["family"]), given=normalize.given_names(row["given"]),
                  gender=normalize.gender(row["gender"]), postal_code=normalize.postal_code(row["postal_code"]))
    return Candidate(**fields)


CANDIDATE_FIELDS = ("id", "fhir_id", "umb", "member_number", "subscriber_id", "family", "given", "birth_date",
                    "gender", "postal_code")
