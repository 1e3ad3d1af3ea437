"""Set-based writes of bulk member match: COPY and unnest() instead of one statement per row.

A 10,000-member request is 10,000 entries, outcomes and consents: through the ORM's bulk helpers (client-side
quoting of every JSON string, CASE expressions for bulk_update) that costs several seconds; PostgreSQL
does the same work in a fraction of it with COPY and server-side bound arrays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from django.db import connection


def _cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's connection (same transaction), for array parameters."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def insert_entries(job_id: UUID, bundles: Sequence[dict[str, Any]]) -> None:
    """One MatchEntry per MemberBundle, in request order, with COPY."""
    with _cursor() as cursor, cursor.copy(
            "COPY matching_matchentry (job_id, index, bundle, outcome, reason) FROM STDIN") as copy:
        for index, bundle in enumerate(bundles):
            copy.write_row((job_id, index, json.dumps(bundle, separators=(",", ":")), "pending", ""))


def record_outcomes(entry_ids: Sequence[int], outcomes: Sequence[str], member_ids: Sequence[int | None],
                    reasons: Sequence[str]) -> list[int]:
    """Set the outcome of entries still pending; returns the ids this call decided (a redelivery decides none)."""
    if not entry_ids:
        return []
    with _cursor() as cursor:
        cursor.execute(
            """
            UPDATE matching_matchentry AS e
               SET outcome = v.outcome, member_id = v.member_id, reason = v.reason
              FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[]) AS v(id, outcome, member_id, reason)
             WHERE e.id = v.id AND e.outcome = 'pending'
            RETURNING e.id
            """,
            (list(entry_ids), list(outcomes), list(member_ids), list(reasons)))
        return [row[0] for row in cursor.fetchall()]


def add_group_members(group_id: str, member_ids: Iterable[int]) -> None:
    with _cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO matching_groupmember (group_id, member_id)
            SELECT %s, m FROM unnest(%b::bigint[]) AS m
            ON CONFLICT DO NOTHING
            """,
            (group_id, sorted(set(member_ids))))


CANDIDATE_SQL = """
SELECT id, fhir_id, umb, member_number, subscriber_id, family, given, birth_date, gender, postal_code
  FROM pdex_member
 WHERE member_number = ANY(%b::text[]) OR subscriber_id = ANY(%b::text[]) OR umb = ANY(%b::text[])
    OR birth_date = ANY(%b::date[])
"""


def candidate_rows(*, member_numbers: Iterable[str] = (), subscriber_ids: Iterable[str] = (),
                   umbs: Iterable[str] = (), birth_dates: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Members by any of the indexed keys (member_number, subscriber_id, umb unique/indexed; birth_date by the
    (birth_date, family) index) — never a scan of all members."""
    params = [sorted(set(values)) for values in (member_numbers, subscriber_ids, umbs, birth_dates)]
    if not any(params):
        return []
    with _cursor() as cursor:
        cursor.execute(CANDIDATE_SQL, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def pending_bundles(job_id: UUID, start: int, end: int) -> list[tuple[int, int, Any]]:
    """(entry id, index, MemberBundle) of the entries in [start, end) still pending."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT id, index, bundle::text FROM matching_matchentry "
            "WHERE job_id = %s AND index >= %s AND index < %s AND outcome = 'pending' ORDER BY index",
            (job_id, start, end))
        rows = cursor.fetchall()
    # Parsed with the cycle collector off: its one caller runs a whole batch so (matching.jobs.run_batch).
    return [(entry_id, index, json.loads(bundle)) for entry_id, index, bundle in rows]


def decided_entries(job_id: UUID) -> list[tuple[int, str, int | None, str | None, str | None, str | None]]:
    """(index, outcome, member id, our Patient id, submitted Patient JSON, submitted CoverageToMatch JSON) of
    every decided entry, the Patient and Coverage cut out of the bundle by PostgreSQL (the Consent stays)."""
    with _cursor() as cursor:
        cursor.execute(
            """
            SELECT e.index, e.outcome, e.member_id, m.fhir_id,
                   (SELECT p->'resource' FROM jsonb_array_elements(e.bundle->'part') p
                     WHERE p->>'name' = 'MemberPatient' LIMIT 1)::text,
                   (SELECT p->'resource' FROM jsonb_array_elements(e.bundle->'part') p
                     WHERE p->>'name' IN ('CoverageToMatch', 'OldCoverage') LIMIT 1)::text
              FROM matching_matchentry e LEFT JOIN pdex_member m ON m.id = e.member_id
             WHERE e.job_id = %s AND e.outcome <> 'pending'
             ORDER BY e.index
            """, (job_id,))
        return cursor.fetchall()


def set_group_resource(group_id: str, resource_json: str) -> None:
    """Store a Group's JSON text as is (no second serialization of a multi-megabyte Group)."""
    with _cursor() as cursor:
        cursor.execute("UPDATE matching_membermatchgroup SET resource = %s::jsonb WHERE id = %s",
                       (resource_json, group_id))
