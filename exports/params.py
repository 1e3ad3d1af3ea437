"""Kick-off parameters of $davinci-data-export / $export (Bulk Data 2.0.0 §7.2, ATR, spec §5.1, §5.7):
parsed from a GET query or a POST Parameters body, validated, and kept as an ExportParams; what the job
then runs with is a JobParams, stored on the job.

Anything unsupported or malformed is a 400 OperationOutcome, unless the client sent
`Prefer: handling=lenient`: then it is dropped and reported as a warning in the export's error file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.utils import timezone

from exports import rules
from exports.rules import EXPORT_TYPES
from exports.typefilter import parse_type_filters, split_type_filters, type_filters
from pdex.dates import parse_instant
from pdex.fhir import BadRequest, outcome_issue, parse_prefer
from pdex.parameters import read_parameters, values_by_name

NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
P2P_EXPORT_TYPE = "hl7.fhir.us.davinci-pdex#payertopayer"
ASSOCIATED_DATA = ("LatestProvenanceResources", "RelevantProvenanceResources")
# Which kick-off the parameters are for: $davinci-data-export, a Group or Patient $export, the system $export.
DAVINCI, EXPORT, SYSTEM = "davinci-data-export", "export", "system-export"
# Parameter names → the value[x] types accepted for them in a POST Parameters body.
_VALUE_TYPES: dict[str, tuple[str, ...]] = {
    "_outputFormat": ("valueString", "valueCode"),
    "_since": ("valueInstant", "valueDateTime"),
    "_until": ("valueInstant", "valueDateTime"),
    "_type": ("valueString", "valueCode"),
    "_typeFilter": ("valueString",),
    "includeAssociatedData": ("valueCode", "valueString"),
    "exportType": ("valueCanonical", "valueUri", "valueString", "valueCode"),
    "patient": ("valueReference",),
    "_elements": ("valueString",),
}
# Parameters a client may send that we refuse (or, leniently, ignore): Bulk Data names we do not support.
_UNSUPPORTED: tuple[str, ...] = ()
# `_elements` names: `element` or `Type.element`, root elements only (Bulk Data 2.0.0, FHIR search).
_ELEMENT = re.compile(r"^(?:(?P<type>[A-Z][A-Za-z]+)\.)?(?P<element>[a-z][A-Za-z0-9]{0,63})$")
# A client's clock may run a little ahead of ours: a `_since` this far in the future still counts as now.
SINCE_CLOCK_SKEW = timedelta(minutes=1)


@dataclass
class ExportParams:
    """The validated kick-off parameters of one export."""

    output_format: str = NDJSON_FORMATS[0]
    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = ()
    type_filters: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    include_associated_data: tuple[str, ...] = ()
    export_type: str = P2P_EXPORT_TYPE
    elements: tuple[str, ...] = ()
    lenient: bool = False
    respond_async: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    def job_params(self, *, request_time: datetime) -> JobParams:
        """What the job runs with: these parameters, and the window computed once, at `request_time`."""
        return JobParams(
            window=rules.export_window(request_time=request_time, since=self.since, until=self.until),
            types=self.types, type_filters=self.type_filters, patients=self.patients,
            output_format=self.output_format, include_associated_data=self.include_associated_data,
            export_type=self.export_type, elements=self.elements, lenient=self.lenient)

    @classmethod
    def from_request(cls, request, *, operation: str = DAVINCI) -> ExportParams:
        """From a DRF request: GET query, or POST Parameters body (query parameters are merged in)."""
        body = request.data if request.method == "POST" else None
        return parse_export_params(method=request.method, query=_query_lists(request.query_params), body=body,
                                   prefer=request.headers.get("Prefer"), operation=operation)


@dataclass(frozen=True)
class JobParams:
    """What an export job runs with, fixed at kick-off and stored on the job (ExportJob.params, as JSON).

    One value for every kind of export, $everything included: planning, chunks and finalize read it back
    with `from_json` instead of re-reading a dict, and the window is the one computed at kick-off.
    """

    window: rules.Window
    types: tuple[str, ...] = ()  # empty: every exported type
    type_filters: tuple[str, ...] = ()  # validated _typeFilter queries
    patients: tuple[str, ...] = ()  # `patient` references narrowing the members
    care_start: datetime | None = None  # $everything start/end: date-of-service bounds
    care_end: datetime | None = None
    output_format: str = NDJSON_FORMATS[0]
    include_associated_data: tuple[str, ...] = ()
    export_type: str = P2P_EXPORT_TYPE
    elements: tuple[str, ...] = ()  # validated _elements names
    lenient: bool = False

    @property
    def requested_types(self) -> tuple[str, ...] | None:
        """The requested types, or None for every exported type."""
        return self.types or None

    def context(self, *, regular_member_ids: Iterable[int] = ()) -> rules.ExportContext:
        """The rules' context of one chunk of this job."""
        return rules.export_context(
            window=self.window, types=self.requested_types, type_filters=parsed_type_filters(self.type_filters),
            regular_member_ids=frozenset(regular_member_ids), care_start=self.care_start, care_end=self.care_end,
            elements=self.elements)

    def again_at(self, request_time: datetime) -> JobParams:
        """The same parameters for a re-run at `request_time` (the window moves with it)."""
        return replace(self, window=self.window.again_at(request_time))

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window.to_json(), "types": list(self.types), "type_filters": list(self.type_filters),
            "patients": list(self.patients), "care_start": _instant(self.care_start),
            "care_end": _instant(self.care_end), "output_format": self.output_format,
            "include_associated_data": list(self.include_associated_data), "export_type": self.export_type,
            "elements": list(self.elements), "lenient": self.lenient,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, request_time: datetime) -> JobParams:
        """Read back what `to_json` stored. Jobs stored by earlier releases have no window: theirs is computed
        at the job's `request_time` from the `since`/`until` they kept."""
        if data.get("window"):
            window = rules.Window.from_json(data["window"])
        else:
            window = rules.export_window(request_time=request_time, since=_moment(data.get("since")),
                                         until=_moment(data.get("until")))
        return cls(
            window=window, types=tuple(data.get("types") or ()), type_filters=tuple(data.get("type_filters") or ()),
            patients=tuple(data.get("patients") or ()), care_start=_moment(data.get("care_start")),
            care_end=_moment(data.get("care_end")), output_format=data.get("output_format") or NDJSON_FORMATS[0],
            include_associated_data=tuple(data.get("include_associated_data") or ()),
            export_type=data.get("export_type") or P2P_EXPORT_TYPE, elements=tuple(data.get("elements") or ()),
            lenient=bool(data.get("lenient")))


def _instant(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@lru_cache(maxsize=256)
def parsed_type_filters(queries: tuple[str, ...]) -> dict[str, list[rules.Fragment]]:
    """A job's validated `_typeFilter` queries as the rules' {type: alternatives}, parsed once per process."""
    return type_filters(queries) if queries else {}


def _query_lists(query: Any) -> dict[str, list[str]]:
    if hasattr(query, "lists"):
        return {name: list(values) for name, values in query.lists()}
    return {name: list(values) if isinstance(values, (list, tuple)) else [values] for name, values in query.items()}


def _body_lists(body: Any) -> dict[str, list[Any]]:
    """The Parameters body as {name: [values]}; each value the content of its accepted value[x]."""
    if body in (None, b"", "", {}):
        return {}
    found = values_by_name(read_parameters(body), _VALUE_TYPES)
    references = []
    for value in found.get("patient", []):
        reference = value.get("reference") if isinstance(value, Mapping) else None
        if not isinstance(reference, str) or not reference:
            raise BadRequest("Parameter 'patient' needs a valueReference with a reference.", code="structure")
        references.append(reference)
    if references:
        found["patient"] = references
    return found


class _Collector:
    """Raises, or under lenient handling records a warning and lets the caller drop the value."""

    def __init__(self, lenient: bool):
        self.lenient = lenient
        self.messages: list[dict[str, Any]] = []

    def refuse(self, diagnostics: str, *, expression: str, code: str = "not-supported") -> None:
        if not self.lenient:
            raise BadRequest(diagnostics, code=code)
        self.messages.append(outcome_issue("warning", code, f"Ignored: {diagnostics}", expression=[expression]))


def _comma_list(values: Iterable[Any]) -> list[str]:
    """Repeated comma-list parameters are one list (Bulk Data 2.0.0)."""
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def parse_elements(names: Iterable[str], *, lenient: bool = False) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Validated `_elements` names (export, $everything, search), and the warnings of the ones dropped under
    lenient handling; a malformed name, or one naming a type we do not serve, is refused (BadRequest)."""
    collector = _Collector(lenient)
    kept: list[str] = []
    for name in names:
        match = _ELEMENT.match(name)
        if match is None:
            collector.refuse(f"_elements '{name[:80]}' is not a root element name (element or Type.element).",
                             expression="_elements", code="invalid")
        elif match["type"] and match["type"] not in EXPORT_TYPES:
            collector.refuse(f"_elements '{name}' names a type this server does not export.", expression="_elements")
        elif name not in kept:
            kept.append(name)
    return tuple(kept), collector.messages


def _single(name: str, values: list[Any]) -> Any:
    if len(values) > 1:
        raise BadRequest(f"Parameter '{name}' may appear only once.")
    return values[0] if values else None


def parse_export_params(*, method: str, query: Mapping[str, list[str]], body: Any = None,
                        prefer: str | None = None, operation: str = DAVINCI,
                        now: datetime | None = None) -> ExportParams:
    """Validate every kick-off parameter; BadRequest (400) for the first problem unless lenient."""
    tokens = parse_prefer(prefer)
    collector = _Collector("handling=lenient" in tokens)
    params = ExportParams(lenient=collector.lenient, respond_async="respond-async" in tokens)
    values: dict[str, list[Any]] = {name: list(v) for name, v in query.items()}
    if method == "GET" and "patient" in values:
        raise BadRequest("The 'patient' parameter is only accepted in a POST Parameters body.")
    for name, more in _body_lists(body).items():
        values.setdefault(name, []).extend(more)
    if operation == SYSTEM and "patient" in values:
        # Bulk Data 2.0.0, `patient`: "Not applicable to system level export requests."
        raise BadRequest("The 'patient' parameter does not apply to a system-level export; use Patient/$export "
                         "or Group/[id]/$export.", code="not-supported")

    for name in sorted(set(values) - set(_VALUE_TYPES)):
        reason = "is not supported" if name in _UNSUPPORTED else "is not a parameter of this operation"
        collector.refuse(f"Parameter '{name}' {reason}.", expression=name)

    output_format = _single("_outputFormat", values.get("_outputFormat", []))
    if output_format is not None:
        if output_format not in NDJSON_FORMATS:
            collector.refuse(f"_outputFormat '{output_format}' is not supported; use {', '.join(NDJSON_FORMATS)}.",
                             expression="_outputFormat")
        else:
            params.output_format = output_format

    for name, attribute in (("_since", "since"), ("_until", "until")):
        raw = _single(name, values.get(name, []))
        if raw is not None:
            setattr(params, attribute, parse_instant(name, str(raw)))
    if params.since and params.since > (now or timezone.now()) + SINCE_CLOCK_SKEW:
        # An export of what changed after a moment still to come can only be empty, and its transactionTime
        # would precede its own _since: refused whatever the handling preference.
        raise BadRequest(f"_since {params.since.isoformat()} is in the future.", code="invalid")
    if params.since and params.until and params.until <= params.since:
        raise BadRequest("_until must be later than _since.")

    requested_types = _comma_list(values.get("_type", []))
    types = []
    for resource_type in requested_types:
        if resource_type not in EXPORT_TYPES:
            collector.refuse(f"_type {resource_type} is not exported by this server.", expression="_type")
        elif resource_type not in types:
            types.append(resource_type)
    if requested_types and not types:
        raise BadRequest("None of the requested _type values is exported by this server.", code="not-supported")
    params.types = tuple(types)

    accepted_filters = []
    for query_text in split_type_filters(str(v) for v in values.get("_typeFilter", [])):
        _, warnings = parse_type_filters([query_text], types=params.types or None, lenient=collector.lenient)
        if warnings:
            collector.messages.extend(warnings)
        else:
            accepted_filters.append(query_text)
    params.type_filters = tuple(accepted_filters)

    params.patients = tuple(str(p) for p in values.get("patient", []))
    for reference in params.patients:
        if not re.match(r"^(Patient/)?[A-Za-z0-9\-.]{1,64}$", reference):
            raise BadRequest(f"patient reference '{reference}' is not a Patient reference.")

    associated = []
    for code in _comma_list(values.get("includeAssociatedData", [])):
        if code in ASSOCIATED_DATA:
            associated.append(code)
        else:
            collector.refuse(f"includeAssociatedData '{code}' is not supported.", expression="includeAssociatedData")
    params.include_associated_data = tuple(associated)

    params.elements, dropped = parse_elements(_comma_list(values.get("_elements", [])), lenient=collector.lenient)
    collector.messages.extend(dropped)

    export_type = _single("exportType", values.get("exportType", []))
    if export_type is None:
        if operation == DAVINCI:
            collector.messages.append(outcome_issue(
                "information", "informational",
                f"exportType was absent; treated as {P2P_EXPORT_TYPE} (payer-to-payer).", expression=["exportType"]))
    elif export_type != P2P_EXPORT_TYPE:
        raise BadRequest(f"exportType '{export_type}' is not supported; this server answers {P2P_EXPORT_TYPE}.",
                         code="not-supported")
    params.messages = collector.messages
    return params
