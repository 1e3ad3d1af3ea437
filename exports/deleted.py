"""The manifest's `deleted` array (Bulk Data 2.0): what was deleted since a `_since` export's `_since`.

Each deletion leaves a tombstone with the row's rule columns as they were (pdex.ingest.delete_resources). An
export with `_since` lists a tombstone when it is of one of the export's members, deleted after `_since` and by
the request time, of a requested member-owned type, and the same P2P rules as the output (exports.rules.rule_sql:
window, PA rule, sensitivity under the member's consent) would have let the partner receive the resource: a
partner never learns of a resource it could not have seen. A Provenance's tombstone follows its member (its
targets are gone with it). One line per deleted resource: a transaction Bundle with one DELETE entry.
Tombstones older than TOMBSTONE_RETENTION_DAYS are expired by the maintenance sweep (docs/exports.md).
"""

# SQL is composed from our own constants and the rules' fragments; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime

from django.db import connection

from exports import rules
from exports.params import JobParams
from pdex.extract import SHARED_TYPES, format_instant
from pdex.jobs.models import OutputFile
from pdex.jobs.outputs import write_output_file

DELETED_TYPE = "Bundle"
TOMBSTONES = "pdex_tombstone"
BUNDLE_NAMESPACE = uuid.UUID("0d9f6a52-7e1c-4b8e-9a55-3f7f2b0c4d11")


def deleted_query(member_ids: list[int], context: rules.ExportContext) -> tuple[str, dict] | None:
    """SQL of (type, id, deleted_at) of the tombstones a `_since` export lists; None without `_since`."""
    window = context.window
    if window.updated_after is None:
        return None
    alternatives = []
    for resource_type in context.types:
        if resource_type in SHARED_TYPES:
            continue
        rule = "TRUE" if resource_type == rules.PROVENANCE else rules.rule_sql(resource_type, context, "t")
        alternatives.append(f"(t.resource_type = '{resource_type}' AND {rule})")
    if not alternatives:
        return None
    params = {**rules.base_params(context), "member_ids": member_ids}
    upper = "AND t.deleted_at <= %(updated_before)s" if window.updated_before is not None else ""
    sql = (f"SELECT t.resource_type, t.fhir_id, t.deleted_at FROM {TOMBSTONES} t"
           f" WHERE t.member_id = ANY(%(member_ids)s::bigint[]) AND t.deleted_at > %(updated_after)s"
           f" AND t.deleted_at <= %(request_time)s {upper} AND ({' OR '.join(alternatives)})"
           f" ORDER BY t.deleted_at, t.id")
    return sql, params


def deleted_bundle(resource_type: str, fhir_id: str, deleted_at: datetime) -> dict:
    """One `deleted` line: a transaction Bundle whose one entry is the DELETE of the resource."""
    instant = format_instant(deleted_at)
    return {"resourceType": "Bundle",
            "id": str(uuid.uuid5(BUNDLE_NAMESPACE, f"{resource_type}/{fhir_id}|{instant}")),
            "meta": {"lastUpdated": instant}, "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"{resource_type}/{fhir_id}"}}]}


def deleted_lines(include_sensitive: Mapping[int, bool], params: JobParams) -> Iterator[bytes]:
    """The `deleted` file's lines for these members (member id → may receive sensitive data)."""
    regular = [member for member, sensitive in include_sensitive.items() if not sensitive]
    context = params.context(regular_member_ids=regular)
    query = deleted_query(sorted(include_sensitive), context)
    if query is None:
        return
    with connection.cursor() as cursor:
        cursor.execute(*query)
        for resource_type, fhir_id, deleted_at in cursor.fetchall():
            yield json.dumps(deleted_bundle(resource_type, fhir_id, deleted_at), separators=(",", ":")).encode()


def write_deleted_file(job, include_sensitive: Mapping[int, bool], params: JobParams) -> OutputFile | None:
    """The job's `deleted` file, when it has a `_since` and something to list (planning writes it: it knows
    the members and their consents)."""
    lines = list(deleted_lines(include_sensitive, params))
    if not lines:
        return None
    return write_output_file(partner=job.partner, job_id=job.id, resource_type=DELETED_TYPE, lines=iter(lines),
                             kind=OutputFile.Kind.DELETED, sequence=0)
