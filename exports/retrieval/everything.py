"""Single-member retrieval (spec §1.7, §6): the access rule, keyset-paged searchset Bundles, $everything.

A partner reads a member's data only while the consent decision says it can comply *now*; anything else
is 404, so ids reveal nothing. Rows come from exports.rules — the same SQL as the bulk export — so the
pages of `$everything` together hold exactly what an export of the member holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.db import connection
from django.utils import timezone

from consent.decision import Decision
from consent.services import decision_for, decisions_for_members
from exports import rules
from exports.params import JobParams, parse_elements, parse_instant, parse_prefer
from exports.provenance import payer_organization, source_formats_of, transmitter_provenance
from exports.typefilter import date_range
from pdex import audit
from pdex.auth.scopes import satisfies
from pdex.extract import SHARED_TYPES
from pdex.fhir import BadRequest, NotFound, outcome_issue, require_fhir_id
from pdex.models import Member, Partner, Resource
from pdex.parameters import read_parameters, values_by_name

DEFAULT_COUNT = 100
MAX_COUNT = 1000
CURSOR_SALT = "pdex.paging"
CURSOR_MAX_AGE = timedelta(hours=24)
EVERYTHING_PARAMS = ("start", "end", "_since", "_type", "_count", "_page", "_elements")
_EVERYTHING_VALUE_TYPES = {"start": ("valueDate",), "end": ("valueDate",), "_since": ("valueInstant",),
                           "_type": ("valueCode", "valueString"), "_count": ("valueInteger",),
                           "_elements": ("valueString",)}


# --- access ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberAccess:
    """A member the calling partner may read now, and how much (the consent decision)."""

    member: Member
    decision: Decision

    @property
    def regular_member_ids(self) -> frozenset[int]:
        return frozenset() if self.decision.include_sensitive else frozenset({self.member.pk})


def member_access(partner: Partner, patient_id: str, *, request=None, action: str = "read") -> MemberAccess:
    """The member behind `Patient/{patient_id}` if the partner's consent can be complied with now; else 404."""
    patient_id = require_fhir_id(patient_id.removeprefix("Patient/"), "Patient")
    member = Member.objects.filter(fhir_id=patient_id).first()
    decision = decision_for(member, partner) if member else None
    if member is None or decision is None or not decision.allowed:
        raise NotFound(f"Patient/{patient_id} is not known to this server or not available to this client.",
                       audit_reason="no member the client may read" if member is None
                       else f"consent: {decision.reason}")
    audit.record(action, audit.SUCCESS, partner=partner, request=request, entity=f"Patient/{member.fhir_id}",
                 detail={"sensitive": decision.include_sensitive})
    return MemberAccess(member=member, decision=decision)


def readable_members(partner: Partner, *, now: datetime | None = None) -> tuple[list[int], frozenset[int]]:
    """All members the partner may read now, and those of them under a #regular consent."""
    member_ids = list(partner.consents.values_list("member_id", flat=True))
    decisions = decisions_for_members(partner, member_ids, now=now)
    allowed = sorted(m for m, d in decisions.items() if d.allowed)
    return allowed, frozenset(m for m in allowed if not decisions[m].include_sensitive)


def readable_types(granted_scopes: Iterable[str], types: Iterable[str]) -> list[str]:
    """The types the token lets the partner search (PDex: filter to what the requester may see)."""
    granted = list(granted_scopes)
    return [t for t in types if satisfies(granted, f"system/{t}.rs")]


# --- paging ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """Where the next page starts, and what every page of one search shares: its request time (so the
    window does not move between pages) and its total (counted once, on the first page)."""

    after: int
    request_time: datetime
    total: int = 0


def search_key(path: str, query: Mapping[str, Any]) -> str:
    """What a page token is bound to: the path and every parameter but `_page`, in a canonical order."""
    pairs = sorted((name, str(value)) for name, values in query.items() if name != "_page"
                   for value in (values if isinstance(values, (list, tuple)) else [values]))
    return f"{path}?{urlencode(pairs)}"


def encode_cursor(cursor: Cursor, key: str) -> str:
    return signing.dumps({"a": cursor.after, "t": cursor.request_time.isoformat(), "n": cursor.total},
                         salt=f"{CURSOR_SALT}:{key}", compress=True)


def decode_cursor(token: str | None, key: str) -> Cursor | None:
    """A page token we issued for this very search (signed and bound to its path and parameters, so a
    client can neither move the window by editing it nor carry it over to another search)."""
    if token is None:
        return None
    try:
        data = signing.loads(token, salt=f"{CURSOR_SALT}:{key}", max_age=CURSOR_MAX_AGE)
        return Cursor(after=int(data["a"]), request_time=datetime.fromisoformat(data["t"]), total=int(data["n"]))
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise BadRequest("The _page link is invalid or has expired; start the search again.") from None


@dataclass(frozen=True)
class Row:
    pk: int
    resource_type: str
    fhir_id: str
    refs: tuple[str, ...]
    body_text: str

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.fhir_id}"


def _union(queries: Sequence[tuple[str, dict]]) -> tuple[str, dict]:
    params: dict[str, Any] = {}
    for _, query_params in queries:
        params.update(query_params)
    return " UNION ALL ".join(f"({sql})" for sql, _ in queries), params


def page_rows(queries: Sequence[tuple[str, dict]], *, after: int, limit: int,
              elements: Sequence[str] = ()) -> list[Row]:
    """At most `limit` rows after `after` in id order: memory is bounded by the page, not the member.

    Two steps: the keys of the page through the rules, then the lines of just those rows, so the
    non-financial view and the JSON text are computed for one page only.
    """
    if not queries:
        return []
    union, params = _union(queries)
    sql = f"SELECT * FROM ({union}) AS page WHERE page.id > %(page_after)s ORDER BY page.id LIMIT %(page_limit)s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "page_after": after, "page_limit": limit})
        keys = cursor.fetchall()
        if not keys:
            return []
        lines_sql, lines_params = rules.lines_query([key[0] for key in keys], elements)
        cursor.execute(lines_sql, lines_params)
        lines = dict(cursor.fetchall())
    return [Row(pk, rtype, fid, tuple(refs or ()), lines[pk]) for pk, rtype, fid, refs in keys]


def count_rows(queries: Sequence[tuple[str, dict]]) -> int:
    if not queries:
        return 0
    union, params = _union(queries)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM ({union}) AS matches", params)  # noqa: S608
        return cursor.fetchone()[0]


def shared_rows(references: Iterable[str]) -> list[Row]:
    """Shared resources (Organization, Practitioner, …) by `Type/id`, for _include."""
    wanted = sorted({r for r in references if r.partition("/")[0] in SHARED_TYPES})
    if not wanted:
        return []
    sql = ("SELECT r.id, r.resource_type, r.fhir_id, r.refs, r.body::text FROM pdex_resource r"
           " WHERE r.member_id IS NULL AND (r.resource_type || '/' || r.fhir_id) = ANY(%(refs)s) ORDER BY r.id")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"refs": wanted})
        return [Row(pk, rtype, fid, tuple(refs or ()), body) for pk, rtype, fid, refs, body in cursor.fetchall()]


# --- the Bundle --------------------------------------------------------------------------------------

@dataclass
class Page:
    """One page of a searchset: matches, includes, warnings and the links around it."""

    total: int
    matches: list[Row]
    self_url: str
    next_url: str | None = None
    includes: list[Row] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)  # our own includes (Provenance, payer)
    issues: list[dict[str, Any]] = field(default_factory=list)


def _entry(full_url: str, resource_text: str, mode: str) -> str:
    return f'{{"fullUrl":{json.dumps(full_url)},"resource":{resource_text},"search":{{"mode":"{mode}"}}}}'


def bundle_text(page: Page) -> str:
    """The searchset Bundle as JSON text, built around the stored JSON without parsing it."""
    base = settings.FHIR_BASE_URL
    links = [{"relation": "self", "url": page.self_url}]
    if page.next_url:
        links.append({"relation": "next", "url": page.next_url})
    entries = [_entry(f"{base}/{row.reference}", row.body_text, "match") for row in page.matches]
    entries += [_entry(f"{base}/{row.reference}", row.body_text, "include") for row in page.includes]
    entries += [_entry(f"{base}/{body['resourceType']}/{body['id']}", json.dumps(body), "include")
                for body in page.generated]
    if page.issues:
        outcome = {"resourceType": "OperationOutcome", "issue": page.issues}
        entries.append(f'{{"resource":{json.dumps(outcome)},"search":{{"mode":"outcome"}}}}')
    head = {"resourceType": "Bundle", "type": "searchset", "timestamp": timezone.now().isoformat(),
            "total": page.total, "link": links}
    return json.dumps(head)[:-1] + ',"entry":[' + ",".join(entries) + "]}"


def link_url(path: str, params: Mapping[str, Any], cursor: Cursor | None = None) -> str:
    """An absolute URL on our base for `path` (relative to /fhir) with these parameters."""
    query = [(name, value) for name, values in params.items() for value in (
        values if isinstance(values, (list, tuple)) else [values]) if name != "_page"]
    if cursor is not None:
        query.append(("_page", encode_cursor(cursor, search_key(path, params))))
    return f"{settings.FHIR_BASE_URL}{path}" + (f"?{urlencode(query)}" if query else "")


def transmitter_for(matches: Sequence[Row], request_time: datetime) -> list[dict[str, Any]]:
    """The transmitter Provenance of a page and our Organization it names (spec §5.7 rule 8)."""
    if not matches:
        return []
    references = [row.reference for row in matches]
    return [transmitter_provenance(references, recorded=request_time, source_formats=source_formats_of(references)),
            payer_organization()]


# --- $everything -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EverythingParams:
    """Validated parameters of Patient/{id}/$everything."""

    start: datetime | None = None
    end: datetime | None = None
    since: datetime | None = None
    types: tuple[str, ...] = ()
    count: int = DEFAULT_COUNT
    page_token: str | None = None
    elements: tuple[str, ...] = ()  # _elements: the matches are subsets (mandatory elements kept, SUBSETTED)
    lenient: bool = False
    respond_async: bool = False
    issues: tuple[dict[str, Any], ...] = ()
    query: Mapping[str, list[str]] = field(default_factory=dict)  # what the next link repeats


def parse_count(raw: Any) -> int:
    try:
        count = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"_count must be an integer; got '{raw}'.") from None
    if count < 1:
        raise BadRequest("_count must be at least 1.")
    return min(count, MAX_COUNT)


def _everything_body(body: Any) -> dict[str, list[str]]:
    if body in (None, b"", "", {}):
        return {}
    found = values_by_name(read_parameters(body), _EVERYTHING_VALUE_TYPES)
    return {name: [str(value) for value in values] for name, values in found.items()}


def parse_everything_params(*, query: Mapping[str, list[str]], body: Any = None,
                            prefer: str | None = None) -> EverythingParams:
    """start/end (dates), _since (instant), _type (comma lists, repeats), _count, _page; others → 400
    unless `Prefer: handling=lenient`, which reports them in an OperationOutcome entry."""
    tokens = parse_prefer(prefer)
    lenient = "handling=lenient" in tokens
    values = {name: list(v) for name, v in query.items()}
    for name, more in _everything_body(body).items():
        values.setdefault(name, []).extend(more)
    issues = []
    for name in sorted(set(values) - set(EVERYTHING_PARAMS)):
        if not lenient:
            raise BadRequest(f"Parameter '{name}' is not supported by $everything.", code="not-supported")
        issues.append(outcome_issue("warning", "not-supported", f"Ignored parameter '{name}'.", expression=[name]))
        del values[name]
    for name in ("start", "end", "_since", "_count", "_page"):
        if len(values.get(name, [])) > 1:
            raise BadRequest(f"Parameter '{name}' may appear only once.")

    def one(name: str) -> str | None:
        return values[name][0] if values.get(name) else None

    start = date_range(one("start"))[0] if one("start") else None
    end = date_range(one("end"))[1] - timedelta(microseconds=1) if one("end") else None
    if start and end and end < start:
        raise BadRequest("end must not be before start.")
    types: list[str] = []
    for resource_type in (t.strip() for v in values.get("_type", []) for t in v.split(",") if t.strip()):
        if resource_type not in rules.EXPORT_TYPES:
            if not lenient:
                raise BadRequest(f"_type {resource_type} is not available from this server.", code="not-supported")
            issues.append(outcome_issue("warning", "not-supported", f"Ignored _type {resource_type}.",
                                        expression=["_type"]))
        elif resource_type not in types:
            types.append(resource_type)
    if values.get("_type") and not types:
        raise BadRequest("None of the requested _type values is available from this server.", code="not-supported")
    elements, dropped = parse_elements((e.strip() for v in values.get("_elements", []) for e in v.split(",")
                                        if e.strip()), lenient=lenient)
    issues.extend(dropped)
    return EverythingParams(
        start=start, end=end, since=parse_instant("_since", one("_since")) if one("_since") else None,
        types=tuple(types), count=parse_count(one("_count")) if one("_count") else DEFAULT_COUNT,
        page_token=one("_page"), elements=elements, lenient=lenient,
        respond_async="respond-async" in tokens, issues=tuple(issues),
        query={k: v for k, v in values.items() if k != "_page"},
    )


def everything_context(access: MemberAccess, params: EverythingParams, *, request_time: datetime,
                       allowed_types: Iterable[str]) -> rules.ExportContext:
    """The export rules' context for one member's $everything."""
    allowed = set(allowed_types)
    types = [t for t in (params.types or rules.EXPORT_TYPES) if t in allowed]
    if not types:
        raise BadRequest("The token allows none of the requested types.", code="forbidden")
    # Types the member has no rows of add nothing but planning time to every page's query.
    stored = stored_types(access.member)
    types = [t for t in types if t in stored or t in SHARED_TYPES]
    return rules.export_context(request_time=request_time, since=params.since, types=types,
                                regular_member_ids=access.regular_member_ids,
                                care_start=params.start, care_end=params.end, elements=params.elements)


def stored_types(member: Member) -> set[str]:
    """The resource types the store holds for this member."""
    return set(Resource.objects.filter(member=member).values_list("resource_type", flat=True).distinct())


def everything_queries(member: Member, context: rules.ExportContext) -> list[tuple[str, dict]]:
    """One keyed query per type, each through the export rules (the same rows an export writes)."""
    return [rules.keyed_query(t, [member.pk], context) for t in context.types]


def everything_page(access: MemberAccess, params: EverythingParams, *, path: str, granted_scopes: Iterable[str],
                    now: datetime | None = None) -> Page:
    """One page of Patient/{id}/$everything."""
    cursor = decode_cursor(params.page_token, search_key(path, params.query))
    request_time = cursor.request_time if cursor else (now or timezone.now())
    context = everything_context(access, params, request_time=request_time,
                                 allowed_types=readable_types(granted_scopes, rules.EXPORT_TYPES))
    queries = everything_queries(access.member, context)
    rows = page_rows(queries, after=cursor.after if cursor else 0, limit=params.count + 1, elements=params.elements)
    matches = rows[:params.count]
    more = len(rows) > params.count
    issues = list(params.issues) + (context.window.informational_issues() if not cursor else [])
    total = cursor.total if cursor else count_rows(queries)
    return Page(
        total=total,
        matches=matches,
        self_url=link_url(path, params.query, cursor),
        next_url=link_url(path, params.query, Cursor(matches[-1].pk, request_time, total)) if more else None,
        generated=transmitter_for(matches, request_time),
        issues=issues,
    )


def everything_job(access: MemberAccess, params: EverythingParams, *, granted_scopes: Iterable[str],
                   now: datetime | None = None) -> JobParams:
    """The parameters of an asynchronous $everything as a bulk job of this one member.

    Types are narrowed to what the token may read, as for synchronous pages; start/end travel as the job's
    care-date bounds, so the bulk pipeline applies the same date-of-service filter as the pages.
    """
    types = readable_types(granted_scopes, params.types or rules.EXPORT_TYPES)
    if not types:
        raise BadRequest("The token allows none of the requested types.", code="forbidden")
    return JobParams(
        window=rules.export_window(request_time=now or timezone.now(), since=params.since),
        patients=(f"Patient/{access.member.fhir_id}",),
        types=() if tuple(types) == tuple(rules.EXPORT_TYPES) else tuple(types),
        care_start=params.start, care_end=params.end, elements=params.elements)
