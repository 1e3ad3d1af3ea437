"""Writes from our own systems: transaction and batch Bundles, and single PUT / DELETE, through the ingest path.

Every resource written goes through `pdex.ingest.parse_line` (validation with the R4B models, then the same
extraction as `load_ndjson`: member link, date of service, sensitivity, PA status) and `write_batch`, then the
same member resolution and member identity from Coverage; so a Coverage written here makes its member matchable
by the new member id as soon as the request returns. We are the server: `meta.lastUpdated` is the time of the
write, so `_since` exports see it.

A transaction is one database transaction: every entry is checked first, and any refusal (or a failure part way)
answers with an OperationOutcome naming each refused entry, with nothing written. A batch runs each entry on its
own and answers each with its status or OperationOutcome. Supported: POST (create, server-assigned id), PUT
`Type/id` (create or update) and `Type?identifier=system|value` (conditional update), DELETE `Type/id` and
`Type?identifier=…` (a tombstone remains, pdex.ingest.delete_resources). References to another entry's
`urn:uuid:` fullUrl are rewritten to the id it gets. docs/data-store.md, "Writing".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from django.db import connection, transaction
from django.utils import timezone

from pdex.auth.scopes import R4_RESOURCE_TYPES
from pdex.extract import format_instant
from pdex.fhir import BadRequest, FhirError, outcome_issue, valid_fhir_id
from pdex.identity import refresh_member_identity
from pdex.ingest import (
    LoadReport,
    delete_resources,
    parse_config,
    parse_line,
    resolve_members,
    stored_members,
    write_batch,
)
from pdex.write.access import CREATE, DELETE, UPDATE, Writer

METHODS = ("POST", "PUT", "DELETE")
# FHIR's order of processing a transaction: deletes, then creates, then updates.
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2}


@dataclass
class Entry:
    """One entry to carry out: its method, target and resource (the resource's id once known)."""

    index: int
    method: str
    resource_type: str
    fhir_id: str | None = None
    identifier: tuple[str, str] | None = None  # conditional: (system, value); system may be ""
    resource: dict | None = None
    full_url: str | None = None


@dataclass(frozen=True)
class EntryOutcome:
    """What became of one entry: its HTTP status line, where the resource is, and the stored body."""

    index: int
    status: str
    resource_type: str = ""
    fhir_id: str = ""
    last_modified: datetime | None = None
    body_text: str | None = None
    outcome: dict | None = None

    @property
    def status_code(self) -> int:
        return int(self.status.split()[0])

    def response_entry(self) -> dict[str, Any]:
        response: dict[str, Any] = {"status": self.status}
        if self.fhir_id and self.status_code < 300 and self.body_text is not None:
            response["location"] = f"{self.resource_type}/{self.fhir_id}"
        if self.last_modified is not None:
            response["lastModified"] = format_instant(self.last_modified)
        if self.outcome is not None:
            response["outcome"] = self.outcome
        entry: dict[str, Any] = {"response": response}
        if self.body_text is not None:
            entry["fullUrl"] = f"{self.resource_type}/{self.fhir_id}"
        return entry


class EntryRefused(FhirError):
    """One entry refused: its index, status and why."""

    def __init__(self, index: int, diagnostics: str, *, status: int = 400, code: str = "invalid"):
        super().__init__(diagnostics, status=status, code=code)
        self.index = index

    def issue(self) -> dict[str, Any]:
        return outcome_issue("error", self.code, self.diagnostics, expression=[f"Bundle.entry[{self.index}]"])

    def entry_outcome(self) -> EntryOutcome:
        return EntryOutcome(self.index, f"{self.status} {_REASONS.get(self.status, 'Error')}",
                            outcome={"resourceType": "OperationOutcome", "issue": [self.issue()]})


class TransactionFailed(FhirError):
    """A transaction refused as a whole: one issue per refused entry; nothing was written."""

    def __init__(self, refused: list[EntryRefused]):
        first = refused[0]
        super().__init__(f"The transaction was not applied: {len(refused)} entr{'y' if len(refused) == 1 else 'ies'}"
                         " refused; nothing was written.", status=first.status, code=first.code,
                         issues=[r.issue() for r in refused],
                         audit_reason=f"{len(refused)} entries refused",
                         audit_detail={"entries": [r.index for r in refused][:50]})


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 412: "Precondition Failed", 422: "Unprocessable Entity"}


@dataclass
class BundleResult:
    kind: str
    outcomes: list[EntryOutcome] = field(default_factory=list)

    def response_bundle(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": f"{self.kind}-response",
                "entry": [o.response_entry() for o in sorted(self.outcomes, key=lambda o: o.index)]}

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for outcome in self.outcomes:
            found[outcome.status] = found.get(outcome.status, 0) + 1
        return found


# --- reading the request (no database) -------------------------------------------------------------

def _target(index: int, url: Any) -> tuple[str, str | None, tuple[str, str] | None]:
    """(type, id, identifier condition) of a request.url: `Type`, `Type/id` or `Type?identifier=system|value`."""
    if not isinstance(url, str) or not url:
        raise EntryRefused(index, "request.url is required.")
    if "\x00" in url:
        raise EntryRefused(index, "request.url holds U+0000.")
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    resource_type = parts[0]
    if resource_type not in R4_RESOURCE_TYPES:
        raise EntryRefused(index, f"request.url names no FHIR R4 resource type: {resource_type[:64]!r}.",
                           code="not-supported")
    if query:
        params = parse_qs(query, keep_blank_values=True)
        values = params.get("identifier") or []
        if set(params) != {"identifier"} or len(values) != 1 or not values[0]:
            raise EntryRefused(index, "Only conditional writes on one `identifier=system|value` are supported.",
                               code="not-supported")
        system, _, value = values[0].rpartition("|") if "|" in values[0] else ("", "", values[0])
        if not value:
            raise EntryRefused(index, "The identifier condition has no value.")
        return resource_type, None, (system, value)
    if len(parts) == 1:
        return resource_type, None, None
    if len(parts) == 2 and valid_fhir_id(parts[1]):
        return resource_type, parts[1], None
    raise EntryRefused(index, "request.url must be Type, Type/id or Type?identifier=system|value.")


def read_entry(index: int, raw: Any) -> Entry:
    """One Bundle.entry as an Entry, or EntryRefused."""
    if not isinstance(raw, Mapping):
        raise EntryRefused(index, "An entry must be an object.", code="structure")
    request = raw.get("request")
    if not isinstance(request, Mapping):
        raise EntryRefused(index, "entry.request is required.", code="required")
    method = request.get("method")
    if method not in METHODS:
        raise EntryRefused(index, f"request.method {str(method)[:10]!r} is not supported here (POST, PUT, DELETE).",
                           code="not-supported")
    resource_type, fhir_id, identifier = _target(index, request.get("url"))
    resource = raw.get("resource")
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    if method == "DELETE":
        if fhir_id is None and identifier is None:
            raise EntryRefused(index, "DELETE needs Type/id or Type?identifier=….")
        return Entry(index, method, resource_type, fhir_id, identifier, None, full_url)
    if not isinstance(resource, Mapping) or resource.get("resourceType") != resource_type:
        raise EntryRefused(index, f"entry.resource must be a {resource_type} resource.", code="structure")
    resource = json.loads(json.dumps(resource))  # our own copy: ids and references are rewritten below
    if method == "POST":
        if fhir_id is not None or identifier is not None:
            raise EntryRefused(index, "POST creates at Type; use PUT for Type/id or a conditional update.")
        return Entry(index, method, resource_type, None, None, resource, full_url)
    if fhir_id is None and identifier is None:
        raise EntryRefused(index, "PUT needs Type/id or Type?identifier=….")
    if fhir_id is not None and resource.get("id") not in (None, fhir_id):
        raise EntryRefused(index, f"resource.id must equal the id in request.url ({fhir_id}).")
    return Entry(index, method, resource_type, fhir_id, identifier, resource, full_url)


def read_bundle(body: Any) -> tuple[str, list[Entry | EntryRefused]]:
    """('transaction' | 'batch', its entries, each read or refused)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Bundle":
        raise BadRequest("The request body must be a FHIR Bundle.", code="structure")
    kind = body.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest("Bundle.type must be transaction or batch.", code="not-supported")
    raw = body.get("entry", [])
    if not isinstance(raw, list):
        raise BadRequest("Bundle.entry must be a list.", code="structure")
    entries: list[Entry | EntryRefused] = []
    for index, item in enumerate(raw):
        try:
            entries.append(read_entry(index, item))
        except EntryRefused as refused:
            entries.append(refused)
    return kind, entries


# --- carrying it out -------------------------------------------------------------------------------

def _matching_ids(resource_type: str, identifier: tuple[str, str]) -> list[str]:
    system, value = identifier
    wanted = [{"system": system, "value": value}] if system else [{"value": value}]
    with connection.cursor() as cursor:
        cursor.execute("SELECT fhir_id FROM pdex_resource WHERE resource_type = %s"
                       " AND body -> 'identifier' @> %s::jsonb ORDER BY fhir_id LIMIT 2",
                       [resource_type, json.dumps(wanted)])
        return [row[0] for row in cursor.fetchall()]


def _resolve_conditions(entries: list[Entry]) -> list[EntryRefused]:
    """Give conditional entries their id: the one match, or (PUT) a new id; several matches refuse (412)."""
    refused = []
    for entry in entries:
        if entry.identifier is None:
            continue
        found = _matching_ids(entry.resource_type, entry.identifier)
        if len(found) > 1:
            refused.append(EntryRefused(entry.index, f"More than one {entry.resource_type} has this identifier.",
                                        status=412, code="multiple-matches"))
        elif found:
            entry.fhir_id = found[0]
        elif entry.method == "PUT":
            entry.fhir_id = (entry.resource or {}).get("id") or str(uuid.uuid4())
    return refused


def _rewrite_references(node: Any, targets: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str) and reference in targets:
            node["reference"] = targets[reference]
        for value in node.values():
            _rewrite_references(value, targets)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, targets)


def _carry_out(entries: list[Entry], writer: Writer, now: datetime) -> list[EntryOutcome]:
    """Carry out checked entries in the caller's transaction; raises TransactionFailed (nothing is kept)."""
    refused = _resolve_conditions(entries)
    targets: dict[str, str] = {}
    for entry in entries:
        if entry.method == "POST":
            entry.fhir_id = str(uuid.uuid4())
        if entry.full_url and entry.fhir_id and entry.method != "DELETE":
            targets[entry.full_url] = f"{entry.resource_type}/{entry.fhir_id}"
    existing = stored_members((e.resource_type, e.fhir_id) for e in entries if e.fhir_id)
    config = parse_config(validate=True, source_format=writer.source_format)
    instant = format_instant(now)
    rows, members, outcomes, deletes, patients = [], [], [], [], set()
    for entry in sorted(entries, key=lambda e: (ORDER[e.method], e.index)):
        key = (entry.resource_type, entry.fhir_id)
        if entry.method == "DELETE":
            if not writer.may(DELETE, entry.resource_type):
                refused.append(EntryRefused(entry.index, f"The token may not delete {entry.resource_type}.",
                                            status=403, code="forbidden"))
            elif entry.fhir_id is not None:
                deletes.append((entry, key))
            else:  # a conditional delete that matched nothing
                outcomes.append(EntryOutcome(entry.index, "204 No Content", entry.resource_type))
            continue
        permission = UPDATE if key in existing else CREATE
        if not writer.may(permission, entry.resource_type):
            verb = "update" if permission == UPDATE else "create"
            refused.append(EntryRefused(entry.index, f"The token may not {verb} {entry.resource_type}.",
                                        status=403, code="forbidden"))
            continue
        resource = entry.resource or {}
        resource["id"] = entry.fhir_id
        resource["meta"] = {**(resource.get("meta") if isinstance(resource.get("meta"), dict) else {}),
                            "lastUpdated": instant}
        _rewrite_references(resource, targets)
        row, member, error = parse_line(json.dumps(resource), config)
        if error:
            refused.append(EntryRefused(entry.index, error, status=422, code="processing"))
            continue
        rows.append(row)
        if member:
            members.append(member)
        if row[0] in ("Coverage", "Patient") and row[2]:
            patients.add(row[2])
        outcomes.append(EntryOutcome(entry.index, "200 OK" if key in existing else "201 Created",
                                     entry.resource_type, entry.fhir_id, now, row[3]))
    if refused:
        raise TransactionFailed(sorted(refused, key=lambda r: r.index))
    if deletes:
        delete_resources([key for _, key in deletes], deleted_by=writer.name, now=now)
        for entry, key in deletes:
            if entry.resource_type == "Coverage" and existing.get(key):
                patients.add(existing[key])  # the member's identity may have come from this Coverage
            outcomes.append(EntryOutcome(entry.index, "204 No Content", entry.resource_type, entry.fhir_id or ""))
    if rows:
        write_batch(rows, members, LoadReport())
    if rows or deletes:
        resolve_members()
        refresh_member_identity(patients)
    return outcomes


def apply_transaction(entries: Iterable[Entry | EntryRefused], writer: Writer,
                      now: datetime | None = None) -> BundleResult:
    """All entries or none, in one database transaction."""
    entries = list(entries)
    refused = [e for e in entries if isinstance(e, EntryRefused)]
    if refused:
        raise TransactionFailed(refused)
    now = now or timezone.now()
    with transaction.atomic():
        return BundleResult("transaction", _carry_out(entries, writer, now))


def apply_batch(entries: Iterable[Entry | EntryRefused], writer: Writer, now: datetime | None = None) -> BundleResult:
    """Each entry on its own (a savepoint each): one refused entry leaves the others done."""
    now = now or timezone.now()
    result = BundleResult("batch")
    for entry in entries:
        if isinstance(entry, EntryRefused):
            result.outcomes.append(entry.entry_outcome())
            continue
        try:
            with transaction.atomic():
                result.outcomes += _carry_out([entry], writer, now)
        except TransactionFailed as failed:
            result.outcomes.append(EntryOutcome(
                entry.index, f"{failed.status} {_REASONS.get(failed.status, 'Error')}",
                outcome={"resourceType": "OperationOutcome", "issue": failed.extra_issues}))
    return result


def apply_bundle(body: Any, writer: Writer, *, now: datetime | None = None) -> BundleResult:
    """POST /fhir: a transaction or batch Bundle."""
    kind, entries = read_bundle(body)
    if kind == "transaction":
        return apply_transaction(entries, writer, now)
    return apply_batch(entries, writer, now)


def put_resource(resource_type: str, fhir_id: str, body: Any, writer: Writer,
                 *, now: datetime | None = None) -> EntryOutcome:
    """PUT /fhir/{Type}/{id}: create or update one resource (a one-entry transaction)."""
    entry = _single(read_entry, {"request": {"method": "PUT", "url": f"{resource_type}/{fhir_id}"},
                                 "resource": body})
    return _single_outcome(apply_transaction([entry], writer, now))


def delete_resource(resource_type: str, fhir_id: str, writer: Writer, *, now: datetime | None = None) -> EntryOutcome:
    """DELETE /fhir/{Type}/{id}: 204 whether or not it was there (FHIR allows either)."""
    entry = _single(read_entry, {"request": {"method": "DELETE", "url": f"{resource_type}/{fhir_id}"}})
    return _single_outcome(apply_transaction([entry], writer, now))


def _single(reader, raw: dict) -> Entry:
    try:
        return reader(0, raw)
    except EntryRefused as refused:
        raise FhirError(refused.diagnostics, status=refused.status, code=refused.code) from None


def _single_outcome(result: BundleResult) -> EntryOutcome:
    return result.outcomes[0]
