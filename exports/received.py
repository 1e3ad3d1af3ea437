"""What a partner received: its exports, when they finished and were downloaded, and for which members.

Read for the admin's partner page and its CSV (exports/admin.py). A member was sent in an export when a
chunk of it that finished named the member (chunks keep their member ids after the job completes); the
member's consent policy for that export is whether the chunk withheld their sensitive data (`#regular`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, Max, Min

from exports.models import ExportChunk, ExportJob
from pdex.models import AuditEvent, Partner


@dataclass(frozen=True)
class Totals:
    partner_id: int
    jobs: int
    resources: int
    bytes: int
    last_finished: datetime | None


def totals_by_partner() -> dict[int, Totals]:
    """Per partner: export jobs that wrote something, resources and bytes written, the last one's end."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT j.partner_id, count(*),
                   coalesce(sum((SELECT sum(value::bigint) FROM jsonb_each_text(j.counts))), 0),
                   coalesce(sum((SELECT sum(value::bigint) FROM jsonb_each_text(j.sizes))), 0),
                   max(j.finished_at)
              FROM {ExportJob._meta.db_table} j
             WHERE j.counts <> '{{}}'::jsonb
             GROUP BY j.partner_id""")  # noqa: S608
        return {row[0]: Totals(*row) for row in cursor.fetchall()}


@dataclass(frozen=True)
class Delivery:
    """One export a partner received, and what became of its files."""

    job: ExportJob
    members: int
    resources: int
    bytes: int
    downloads: int
    first_download: datetime | None
    last_download: datetime | None


def deliveries(partner: Partner, *, limit: int = 200) -> list[Delivery]:
    """The partner's exports that wrote something, newest first, with their downloads from the audit trail."""
    jobs = list(ExportJob.objects.filter(partner=partner).exclude(counts={}).order_by("-created_at")[:limit])
    downloads = {
        row["detail__job"]: row for row in AuditEvent.objects.filter(
            partner=partner, action="bulk-download", detail__job__in=[str(job.pk) for job in jobs])
        .values("detail__job").annotate(n=Count("id"), first=Min("recorded"), last=Max("recorded"))}
    members = dict(_members_per_job([job.pk for job in jobs]))
    found = []
    for job in jobs:
        seen = downloads.get(str(job.pk), {})
        found.append(Delivery(job, members.get(job.pk, 0), sum(job.counts.values()), sum(job.sizes.values()),
                              seen.get("n", 0), seen.get("first"), seen.get("last")))
    return found


def _members_per_job(job_ids: list) -> list[tuple]:
    if not job_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT c.job_id, count(DISTINCT m) FROM {ExportChunk._meta.db_table} c, unnest(c.member_ids) m
             WHERE c.job_id = ANY(%s) AND c.status = 'done' GROUP BY c.job_id""", [job_ids])  # noqa: S608
        return cursor.fetchall()


RECEIVED_COLUMNS = ("job", "kind", "requested", "finished", "status", "member_umb", "member_patient_id",
                    "member_number", "consent_policy", "resource_types")


def _received_sql(limit: bool = False) -> str:
    return f"""
        SELECT j.id, j.kind, j.created_at, j.finished_at, j.status, m.umb, m.fhir_id, m.member_number,
               CASE WHEN sent.regular THEN 'regular' ELSE 'sensitive' END,
               (SELECT string_agg(key, ' ' ORDER BY key) FROM jsonb_object_keys(j.counts) key)
          FROM {ExportJob._meta.db_table} j
          JOIN (SELECT c.job_id, u.member_id, bool_or(u.member_id = ANY(c.regular_member_ids)) AS regular
                  FROM {ExportChunk._meta.db_table} c CROSS JOIN unnest(c.member_ids) AS u(member_id)
                 WHERE c.status = 'done'
                   AND c.job_id IN (SELECT id FROM {ExportJob._meta.db_table} WHERE partner_id = %(partner)s)
                 GROUP BY c.job_id, u.member_id) sent ON sent.job_id = j.id
          JOIN pdex_member m ON m.id = sent.member_id
         WHERE j.partner_id = %(partner)s AND j.counts <> '{{}}'::jsonb
         ORDER BY j.created_at DESC, m.umb""" + (" LIMIT %(limit)s" if limit else "")  # noqa: S608


def received_rows(partner: Partner) -> Iterator[tuple]:
    """One row per (export, member) the partner received, newest export first: for the CSV, on a server-side
    cursor, so a 100,000-member export streams rather than loads."""
    sql = _received_sql()
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, {"partner": partner.pk})
        while rows := cursor.fetchmany(2000):
            yield from rows


def members_sample(partner: Partner, *, limit: int = 100) -> list[tuple]:
    """The first rows of `received_rows`, for the page (the CSV has them all)."""
    with connection.cursor() as cursor:
        cursor.execute(_received_sql(limit=True), {"partner": partner.pk, "limit": limit})
        return cursor.fetchall()
