"""The payer-to-payer export rules (spec §5.7), as pure functions and the SQL that applies them.

One implementation serves the bulk export (exports' chunk writer) and single-member retrieval
($everything, per-resource search): both select rows with `chunk_query`/`selection`, so what a partner
sees is the same whichever way it asks. docs/windows.md states every rule and why.

Two independent filters, never one: the *window* is on date of service (`service_start`/`service_end`,
extracted at ingest by pdex.extract), the *incremental* filter is on `meta.lastUpdated` (`last_updated`).
"""

# SQL is composed from our own constants and aliases only (types are checked against EXPORT_TYPES);
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings

from pdex.extract import PA_TYPES, SHARED_TYPES
from pdex.fhir import outcome_issue

CAP, FLOOR = "cap", "floor"
WINDOW_MODES = (CAP, FLOOR)
TABLE = "pdex_resource"

# §5.7 rule 2: which member-owned types get the date-of-service window.
WINDOWED_TYPES = frozenset({
    "Encounter", "Procedure", "Observation", "Immunization", "DiagnosticReport", "MedicationRequest",
    "MedicationDispense", "MedicationStatement", "ImagingStudy", "CarePlan", "CareTeam", "Goal", "Task",
})
ACTIVE_OR_WINDOW_TYPES = frozenset({"Condition", "AllergyIntolerance"})
ACTIVE_CLINICAL_STATUSES = ("active", "recurrence", "relapse")
UNWINDOWED_MEMBER_TYPES = frozenset({"Patient", "Coverage", "Device"})
# Prior authorizations (EOB, and PAS's Claim and ClaimResponse, use=preauthorization) get the PA rule, the others
# of these types the window; a DocumentReference a PA cites goes with its PA.
PA_OR_WINDOW_TYPES = PA_TYPES | {"DocumentReference"}
PROVENANCE = "Provenance"
# Claims whose financial elements are removed in SQL (pdex_nonfinancial, exports migration 0002).
NONFINANCIAL_TYPES = frozenset({"ExplanationOfBenefit", "Claim", "ClaimResponse"})

MEMBER_TYPES = WINDOWED_TYPES | ACTIVE_OR_WINDOW_TYPES | UNWINDOWED_MEMBER_TYPES | PA_OR_WINDOW_TYPES | {PROVENANCE}
# The order of output files and of $everything pages: the member first, shared resources last.
EXPORT_TYPES: tuple[str, ...] = (
    "Patient", "Coverage", "AllergyIntolerance", "CarePlan", "CareTeam", "Claim", "ClaimResponse", "Condition",
    "Device", "DiagnosticReport", "DocumentReference", "Encounter", "ExplanationOfBenefit", "Goal",
    "ImagingStudy", "Immunization", "MedicationDispense", "MedicationRequest", "MedicationStatement",
    "Observation", "Procedure", "Task", "Provenance",
    "Location", "Medication", "Organization", "Practitioner", "PractitionerRole",
)
assert set(EXPORT_TYPES) == MEMBER_TYPES | SHARED_TYPES

# _elements (Bulk Data 2.0.0, FHIR search): what a subset always keeps, and each type's mandatory root elements
# (min ≥ 1 in FHIR R4). "Servers SHOULD always return mandatory elements whether they are requested or not."
ALWAYS_KEPT = ("resourceType", "id", "meta")
MANDATORY_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Coverage": ("status", "beneficiary", "payor"),
    "AllergyIntolerance": ("patient",),
    "CarePlan": ("status", "intent", "subject"),
    "Claim": ("status", "type", "use", "patient", "created", "provider", "priority", "insurance"),
    "ClaimResponse": ("status", "type", "use", "patient", "created", "insurer", "outcome"),
    "Condition": ("subject",),
    "DiagnosticReport": ("status", "code"),
    "DocumentReference": ("status", "content"),
    "Encounter": ("status", "class"),
    "ExplanationOfBenefit": ("status", "type", "use", "patient", "created", "insurer", "provider", "outcome",
                             "insurance"),
    "Goal": ("lifecycleStatus", "description", "subject"),
    "ImagingStudy": ("status", "subject"),
    "Immunization": ("status", "vaccineCode", "patient"),
    "MedicationDispense": ("status",),
    "MedicationRequest": ("status", "intent", "subject"),
    "MedicationStatement": ("status", "subject"),
    "Observation": ("status", "code"),
    "Procedure": ("status", "subject"),
    "Provenance": ("target", "recorded", "agent"),
    "Task": ("status", "intent"),
}
# Mandatory choice elements (`occurrence[x]`): every key with this prefix is kept.
MANDATORY_CHOICES: dict[str, tuple[str, ...]] = {
    "Immunization": ("occurrence",),
    "MedicationDispense": ("medication",),
    "MedicationRequest": ("medication",),
    "MedicationStatement": ("medication", "effective"),
}
# The tag of a resource with elements left out: exactly system and code (the Bulk Data tester compares it whole).
SUBSETTED_TAG = '{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}'

PA_ACTIVE_STATUSES = ("approved", "partial")
PA_PENDING_STATUSES = ("pending",)


@dataclass(frozen=True)
class Window:
    """The two bounds of an export: date of service (window) and meta.lastUpdated (incremental)."""

    request_time: datetime
    mode: str
    service_from: datetime | None
    updated_after: datetime | None
    updated_before: datetime | None
    requested_since: datetime | None = None
    since_was_raised: bool = False
    lookback_years: int = 5

    def to_json(self) -> dict[str, Any]:
        def instant(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {"request_time": instant(self.request_time), "mode": self.mode,
                "service_from": instant(self.service_from), "updated_after": instant(self.updated_after),
                "updated_before": instant(self.updated_before), "requested_since": instant(self.requested_since),
                "since_was_raised": self.since_was_raised, "lookback_years": self.lookback_years}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Window:
        def moment(name: str) -> datetime | None:
            return datetime.fromisoformat(data[name]) if data.get(name) else None

        return cls(request_time=moment("request_time"), mode=data["mode"], service_from=moment("service_from"),
                   updated_after=moment("updated_after"), updated_before=moment("updated_before"),
                   requested_since=moment("requested_since"), since_was_raised=bool(data["since_was_raised"]),
                   lookback_years=int(data["lookback_years"]))

    def again_at(self, request_time: datetime) -> Window:
        """The same request's window at another request time (a re-run), under the same mode and look-back."""
        return export_window(request_time=request_time, since=self.requested_since, until=self.updated_before,
                             mode=self.mode, lookback_years=self.lookback_years)

    def informational_issues(self) -> list[dict[str, Any]]:
        """The OperationOutcome issue reporting a raised `_since` (cap mode), for the error file."""
        if not self.since_was_raised:
            return []
        return [outcome_issue(
            "information", "informational",
            f"_since {self.requested_since.isoformat()} is earlier than the look-back of this server "
            f"(request time minus {self.lookback_years} years); it was raised to "
            f"{self.updated_after.isoformat()} (PDex 2.1.0).",
            expression=["_since"],
        )]


def export_window(*, request_time: datetime, since: datetime | None = None, until: datetime | None = None,
                  mode: str | None = None, lookback_years: int | None = None) -> Window:
    """Both bounds of an export at `request_time` (spec §5.7 rule 1).

    cap (PDex 2.1.0): service date >= request − look-back, and an earlier `_since` is raised to that boundary.
    floor (PDex 2.2.0): `_since` is used unchanged and the service-date window is off.
    """
    mode = mode or settings.EXPORT_WINDOW_MODE
    if mode not in WINDOW_MODES:
        raise ValueError(f"unknown window mode {mode!r}; expected one of {WINDOW_MODES}")
    years = settings.EXPORT_LOOKBACK_YEARS if lookback_years is None else lookback_years
    if mode == FLOOR:
        return Window(request_time=request_time, mode=mode, service_from=None, updated_after=since,
                      updated_before=until, requested_since=since, lookback_years=years)
    boundary = request_time - relativedelta(years=years)
    effective = max(since, boundary) if since is not None else None
    return Window(request_time=request_time, mode=mode, service_from=boundary, updated_after=effective,
                  updated_before=until, requested_since=since,
                  since_was_raised=since is not None and effective != since, lookback_years=years)


@dataclass(frozen=True)
class PriorAuthRule:
    """§5.7 rule 3: active/pending PAs plus those whose status changed recently, minus denied and drug PAs."""

    request_time: datetime
    status_changed_after: datetime
    exclude_denied: bool = True
    exclude_drug: bool = True


def prior_auth_rule(*, request_time: datetime, months: int | None = None, exclude_denied: bool | None = None,
                    exclude_drug: bool | None = None) -> PriorAuthRule:
    months = settings.EXPORT_PA_STATUS_MONTHS if months is None else months
    return PriorAuthRule(
        request_time=request_time,
        status_changed_after=request_time - relativedelta(months=months),
        exclude_denied=settings.EXPORT_EXCLUDE_DENIED_PA if exclude_denied is None else exclude_denied,
        exclude_drug=settings.EXPORT_EXCLUDE_DRUG_PA if exclude_drug is None else exclude_drug,
    )


@dataclass(frozen=True)
class Fragment:
    """A piece of SQL over a row alias with its named parameters (psycopg `%(name)s` style)."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportContext:
    """Everything the rules need for one export or one $everything/search request."""

    window: Window
    pa: PriorAuthRule
    types: tuple[str, ...] = EXPORT_TYPES
    # {resource type: alternatives}; a row passes if any alternative matches (Bulk Data _typeFilter).
    type_filters: Mapping[str, Sequence[Fragment]] = field(default_factory=dict)
    # Members whose consent is #regular: their sensitive resources are withheld (spec §5.7 rule 4).
    regular_member_ids: frozenset[int] = frozenset()
    # $everything start/end: further date-of-service bounds on the windowed types.
    care_start: datetime | None = None
    care_end: datetime | None = None
    # _elements: validated `element` / `Type.element` names (root elements only); empty: whole resources.
    elements: tuple[str, ...] = ()

    @property
    def member_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.types if t in MEMBER_TYPES)


def export_context(*, request_time: datetime | None = None, window: Window | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   types: Iterable[str] | None = None, type_filters: Mapping[str, Sequence[Fragment]] | None = None,
                   regular_member_ids: Collection[int] = (), care_start: datetime | None = None,
                   care_end: datetime | None = None, mode: str | None = None,
                   elements: Iterable[str] = ()) -> ExportContext:
    """An ExportContext from request parameters and the settings (look-back, mode, PA rule).

    A job passes the `window` it computed at kick-off; a synchronous request passes `request_time` (and
    `since`/`until`) and gets its window computed here. `types=None` means every exported type; an empty
    collection means none (the request selects nothing).
    """
    if window is None:
        if request_time is None:
            raise ValueError("an export context needs a window or a request time")
        window = export_window(request_time=request_time, since=since, until=until, mode=mode)
    wanted = set(EXPORT_TYPES) if types is None else set(types)
    unknown = wanted - set(EXPORT_TYPES)
    if unknown:
        raise ValueError(f"not exported types: {sorted(unknown)}")
    return ExportContext(
        window=window,
        pa=prior_auth_rule(request_time=window.request_time),
        types=tuple(t for t in EXPORT_TYPES if t in wanted),
        type_filters=dict(type_filters or {}),
        regular_member_ids=frozenset(regular_member_ids),
        care_start=care_start,
        care_end=care_end,
        elements=tuple(elements),
    )


def base_params(context: ExportContext) -> dict[str, Any]:
    """The named parameters every fragment of `context` may use."""
    window = context.window
    return {
        "service_from": window.service_from,
        "updated_after": window.updated_after,
        "updated_before": window.updated_before,
        "request_time": window.request_time,
        "pa_changed_after": context.pa.status_changed_after,
        "regular_ids": sorted(context.regular_member_ids),
        "care_start": context.care_start,
        "care_end": context.care_end,
    }


# --- SQL per rule (alias = the pdex_resource row being judged) ---------------------------------------

def _and(*parts: str) -> str:
    kept = [p for p in parts if p and p != "TRUE"]
    return "(" + " AND ".join(kept) + ")" if kept else "TRUE"


def _window_sql(context: ExportContext, alias: str) -> str:
    """Date of service inside the window and inside $everything's start/end; undated rows pass."""
    parts = []
    if context.window.service_from is not None:
        parts.append(f"COALESCE({alias}.service_end, {alias}.service_start, 'infinity') >= %(service_from)s")
    if context.care_start is not None:
        parts.append(f"COALESCE({alias}.service_end, {alias}.service_start, 'infinity') >= %(care_start)s")
    if context.care_end is not None:
        parts.append(f"COALESCE({alias}.service_start, {alias}.service_end, '-infinity') <= %(care_end)s")
    return _and(*parts)


def _pa_sql(context: ExportContext, alias: str) -> str:
    rule = context.pa
    active = ", ".join(f"'{s}'" for s in PA_ACTIVE_STATUSES)
    pending = ", ".join(f"'{s}'" for s in PA_PENDING_STATUSES)
    included = (
        f"({alias}.pa_status IN ({pending})"
        f" OR ({alias}.pa_status IN ({active}) AND ({alias}.pa_period_end IS NULL"
        f" OR {alias}.pa_period_end >= %(request_time)s))"
        f" OR {alias}.pa_status_changed >= %(pa_changed_after)s)"
    )
    return _and(
        f"{alias}.eob_use = 'preauthorization'",
        f"{alias}.pa_status <> 'denied'" if rule.exclude_denied else "",
        f"NOT {alias}.pa_drug" if rule.exclude_drug else "",
        included,
    )


def _attached_to_pa_sql(context: ExportContext, alias: str, *, included_only: bool) -> str:
    """A DocumentReference cited by a PA's supportingInfo — a PDex PA EOB's or a PAS Claim's (any PA, or one
    the PA rule includes).

    The citations are stored on the PA row when it is written (`pa_documents`, exports migrations 0011 and
    0013), so this is an array test on the few PAs of the member that cite a document (a partial index), not a
    JSON path over every PA per document.
    """
    pa = f"{alias}_pa"
    condition = _pa_sql(context, pa) if included_only else f"{pa}.eob_use = 'preauthorization'"
    return (
        f"EXISTS (SELECT 1 FROM {TABLE} {pa} WHERE {pa}.member_id = {alias}.member_id"
        f" AND {pa}.resource_type IN ('ExplanationOfBenefit', 'Claim') AND {pa}.eob_use = 'preauthorization'"
        f" AND {pa}.pa_documents <> '{{}}' AND {condition}"
        f" AND ('DocumentReference/' || {alias}.fhir_id) = ANY({pa}.pa_documents))"
    )


def _sensitivity_sql(context: ExportContext, alias: str) -> str:
    if not context.regular_member_ids:
        return "TRUE"
    return f"NOT ({alias}.sensitive AND {alias}.member_id = ANY(%(regular_ids)s::bigint[]))"


def rule_sql(resource_type: str, context: ExportContext, alias: str = "r") -> str:
    """The P2P rules for one member-owned type (window / active / PA / consent), without the incremental
    filters: what makes a row of this member's data shareable at all."""
    window = _window_sql(context, alias)
    if resource_type in WINDOWED_TYPES:
        rule = window
    elif resource_type in ACTIVE_OR_WINDOW_TYPES:
        statuses = ", ".join(f"'{s}'" for s in ACTIVE_CLINICAL_STATUSES)
        rule = f"({alias}.clinical_status IN ({statuses}) OR {window})"
    elif resource_type in PA_TYPES:
        rule = f"({_pa_sql(context, alias)} OR ({alias}.eob_use <> 'preauthorization' AND {window}))"
    elif resource_type == "DocumentReference":
        rule = (f"(CASE WHEN {_attached_to_pa_sql(context, alias, included_only=False)}"
                f" THEN {_attached_to_pa_sql(context, alias, included_only=True)} ELSE {window} END)")
    elif resource_type in UNWINDOWED_MEMBER_TYPES:
        rule = "TRUE"
    elif resource_type == PROVENANCE:
        rule = _provenance_targets_sql(context, alias)
    else:
        raise ValueError(f"{resource_type} is not a member-owned exported type")
    return _and(rule, _sensitivity_sql(context, alias))


def _provenance_targets_sql(context: ExportContext, alias: str) -> str:
    """Provenance follows its targets: every target is this member's (or shared) and passes the rules."""
    target = f"{alias}_t"
    candidates = " OR ".join(
        f"({target}.resource_type = '{t}' AND {rule_sql(t, context, target)})"
        for t in EXPORT_TYPES if t in MEMBER_TYPES and t != PROVENANCE
    )
    return (
        f"(jsonb_typeof({alias}.body -> 'target') = 'array' AND NOT EXISTS ("
        f"SELECT 1 FROM jsonb_array_elements({alias}.body -> 'target') AS {alias}_ref(target)"
        f" WHERE NOT EXISTS (SELECT 1 FROM {TABLE} {target}"
        f" WHERE {target}.resource_type = split_part({alias}_ref.target ->> 'reference', '/', 1)"
        f" AND {target}.fhir_id = split_part({alias}_ref.target ->> 'reference', '/', 2)"
        f" AND ({target}.member_id = {alias}.member_id OR {target}.member_id IS NULL)"
        f" AND ({target}.member_id IS NULL OR {candidates}))))"
    )


def _incremental_sql(context: ExportContext, alias: str) -> str:
    window = context.window
    return _and(
        f"{alias}.last_updated > %(updated_after)s" if window.updated_after is not None else "",
        f"{alias}.last_updated <= %(updated_before)s" if window.updated_before is not None else "",
    )


def _type_filter_sql(resource_type: str, context: ExportContext, alias: str) -> Fragment:
    alternatives = context.type_filters.get(resource_type) or ()
    if not alternatives:
        return Fragment("TRUE")
    params: dict[str, Any] = {}
    for fragment in alternatives:
        params.update(fragment.params)
    sql = "(" + " OR ".join("(" + f.sql.replace("{r}", alias) + ")" for f in alternatives) + ")"
    return Fragment(sql, params)


def member_row_sql(resource_type: str, context: ExportContext, alias: str = "r") -> Fragment:
    """Every filter on one member-owned type: rules, incremental bounds and _typeFilter."""
    type_filter = _type_filter_sql(resource_type, context, alias)
    sql = _and(f"{alias}.resource_type = '{resource_type}'", rule_sql(resource_type, context, alias),
               _incremental_sql(context, alias), type_filter.sql)
    return Fragment(sql, dict(type_filter.params))


def kept_elements(resource_type: str, elements: Iterable[str]) -> tuple[str, ...] | None:
    """The root elements a resource of this type keeps under `_elements`, or None when it is returned whole.

    `element` applies to every type, `Type.element` to that type only; a type none of the names applies to is
    returned whole (the client scoped its names to other types). Kept always: resourceType, id, meta and the
    type's mandatory elements.
    """
    named = [name.partition(".")[2] if "." in name else name for name in elements
             if "." not in name or name.partition(".")[0] == resource_type]
    if not named:
        return None
    return tuple(dict.fromkeys([*ALWAYS_KEPT, *MANDATORY_ELEMENTS.get(resource_type, ()), *named]))


def _subset_sql(json_sql: str, resource_type: str, elements: Iterable[str]) -> str:
    """`json_sql` (a jsonb expression) cut to the kept root elements and tagged SUBSETTED, all in PostgreSQL.

    Element names are validated at parse time (letters and digits only), so they are written as literals.
    """
    kept = kept_elements(resource_type, elements)
    if kept is None:
        return json_sql
    keys = ", ".join(f"'{name}'" for name in kept)
    choices = "".join(f" OR starts_with(pdex_el.key, '{prefix}')"
                      for prefix in MANDATORY_CHOICES.get(resource_type, ()))
    subset = (f"(SELECT jsonb_object_agg(pdex_el.key, pdex_el.value) FROM jsonb_each({json_sql}) AS pdex_el"
              f" WHERE pdex_el.key IN ({keys}){choices})")
    meta = "COALESCE(pdex_sub.doc -> 'meta', '{}'::jsonb)"
    tags = f"COALESCE(pdex_sub.doc -> 'meta' -> 'tag', '[]'::jsonb) || '[{SUBSETTED_TAG}]'::jsonb"
    return (f"(SELECT pdex_sub.doc || jsonb_build_object('meta', {meta} || jsonb_build_object('tag', {tags}))"
            f" FROM (SELECT {subset} AS doc) AS pdex_sub)")


def _json_sql(resource_type: str, alias: str) -> str:
    """A row's JSON as exported (jsonb): the stored body; claims through the non-financial view."""
    if resource_type == "Claim":
        return f"pdex_nonfinancial({alias}.body)"
    if resource_type in ("ExplanationOfBenefit", "ClaimResponse"):
        return (f"(CASE WHEN {alias}.eob_use = 'preauthorization' THEN {alias}.body"
                f" ELSE pdex_nonfinancial({alias}.body) END)")
    return f"{alias}.body"


def stored_text_sql(json_sql: str, alias: str) -> str:
    """The line as stored when the row was written (`export_text`, exports migration 0011: the same
    expression, run by a trigger), computed now only for a row written with the trigger disabled."""
    return f"COALESCE({alias}.export_text, {json_sql}::text)"


def body_sql(resource_type: str, alias: str = "r", elements: Iterable[str] = ()) -> str:
    """The NDJSON line of a row: the stored text (claims already non-financial); under `_elements`, the
    subset, cut from the non-financial view."""
    elements = tuple(elements)
    if not elements:
        return stored_text_sql(_json_sql(resource_type, alias), alias)
    return f"{_subset_sql(_json_sql(resource_type, alias), resource_type, elements)}::text"


def selection(resource_type: str, member_ids: Sequence[int], context: ExportContext,
              alias: str = "r") -> Fragment:
    """`FROM … WHERE …` of the rows of one type a request may see, for these members.

    Shared types (Organization, Practitioner, …) are the rows referenced (Resource.refs) by the exported
    member rows of these members, so call it once per export with all members to write each shared
    resource once.
    """
    if resource_type not in context.types:
        return Fragment(f"FROM {TABLE} {alias} WHERE FALSE")
    params: dict[str, Any] = {**base_params(context), "member_ids": list(member_ids)}
    if resource_type in SHARED_TYPES:
        ref = f"{alias}_ref"
        referrers = []
        for member_type in context.member_types:
            fragment = member_row_sql(member_type, context, ref)
            params.update(fragment.params)
            referrers.append(fragment.sql)
        if not referrers:
            return Fragment(f"FROM {TABLE} {alias} WHERE FALSE")
        # ARRAY(…) is an uncorrelated InitPlan: the referencing rows are judged once, then the shared rows
        # are fetched through the (resource_type, fhir_id) index.
        sql = (
            f"FROM {TABLE} {alias} WHERE {alias}.resource_type = '{resource_type}' AND {alias}.member_id IS NULL"
            f" AND {alias}.fhir_id = ANY(ARRAY(SELECT DISTINCT split_part({ref}_refs.ref, '/', 2) FROM"
            f" (SELECT unnest({ref}.refs) AS ref FROM {TABLE} {ref}"
            f" WHERE {ref}.member_id = ANY(%(member_ids)s::bigint[]) AND ({' OR '.join(referrers)})) AS {ref}_refs"
            f" WHERE split_part({ref}_refs.ref, '/', 1) = '{resource_type}'))"
        )
        return Fragment(sql, params)
    fragment = member_row_sql(resource_type, context, alias)
    params.update(fragment.params)
    sql = f"FROM {TABLE} {alias} WHERE {alias}.member_id = ANY(%(member_ids)s::bigint[]) AND {fragment.sql}"
    return Fragment(sql, params)


def chunk_query(resource_type: str, member_ids: Sequence[int], context: ExportContext) -> tuple[str, dict]:
    """SQL selecting one column, `body_text` (a finished NDJSON line), for one export chunk, in a stable
    order so a chunk run twice writes the same bytes. All filters are applied in PostgreSQL."""
    rows = selection(resource_type, member_ids, context)
    return (f"SELECT {body_sql(resource_type, elements=context.elements)} AS body_text {rows.sql} ORDER BY r.id",
            dict(rows.params))


def keyed_query(resource_type: str, member_ids: Sequence[int], context: ExportContext) -> tuple[str, dict]:
    """`id`, `resource_type`, `fhir_id` and `refs` of the rows `chunk_query` would write, for keyset paging
    ($everything, search): the caller orders and limits, then fetches the page's lines with `lines_query`."""
    rows = selection(resource_type, member_ids, context)
    return f"SELECT r.id, r.resource_type, r.fhir_id, r.refs {rows.sql}", dict(rows.params)


def any_body_sql(alias: str = "r", elements: Iterable[str] = ()) -> str:
    """`body_sql` for rows of mixed types (a page of $everything)."""
    elements = tuple(elements)
    whole = (f"(CASE WHEN {alias}.resource_type = 'Claim' OR ({alias}.resource_type IN ('ExplanationOfBenefit',"
             f" 'ClaimResponse') AND {alias}.eob_use <> 'preauthorization') THEN pdex_nonfinancial({alias}.body)"
             f" ELSE {alias}.body END)")
    if not elements:
        return stored_text_sql(whole, alias)
    cases = " ".join(f"WHEN '{t}' THEN {_subset_sql(whole, t, elements)}" for t in EXPORT_TYPES
                     if kept_elements(t, elements) is not None)
    return f"(CASE {alias}.resource_type {cases} ELSE {whole} END)::text"


def lines_query(row_ids: Sequence[int], elements: Iterable[str] = ()) -> tuple[str, dict]:
    """The NDJSON lines (claims non-financial, subsets under `_elements`) of rows already selected through the
    rules, by primary key."""
    return (f"SELECT r.id, {any_body_sql('r', elements)} AS body_text FROM {TABLE} r"
            " WHERE r.id = ANY(%(line_ids)s::bigint[])", {"line_ids": list(row_ids)})
