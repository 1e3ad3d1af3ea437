"""The export's hot query — one member's resources of one type in a date range — is an index scan."""

import pytest
from django.db import connection

TYPES = ["Encounter", "Observation", "Procedure", "Condition", "ExplanationOfBenefit"]


@pytest.fixture
def store_with_rows(db):
    """200 members × 5 types × 10 resources, with planner statistics, like a loaded store in miniature."""
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO pdex_member (fhir_id, umb, family, given, gender, postal_code, subscriber_id,
                                     created_at, updated_at)
            SELECT 'm' || n, 'UMB-' || n, '', '', '', '', '', now(), now() FROM generate_series(1, 200) AS n""")
        cursor.execute("""
            INSERT INTO pdex_resource (resource_type, fhir_id, member_id, body, last_updated, service_start,
                                       sensitive, clinical_status, eob_use, pa_status, pa_drug, refs, ingested_at)
            SELECT (%s::text[])[1 + (n %% 5)], 'r' || n, m.id, '{}'::jsonb,
                   now() - (n || ' hours')::interval, now() - (n || ' days')::interval,
                   false, '', '', '', false, '{}', now()
            FROM generate_series(1, 10000) AS n JOIN pdex_member m ON m.fhir_id = 'm' || (1 + n %% 200)""", [TYPES])
        cursor.execute("ANALYZE pdex_member, pdex_resource")
        cursor.execute("SELECT array_agg(id) FROM (SELECT id FROM pdex_member ORDER BY id LIMIT 3) AS few")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("column", ["service_start", "last_updated"])
def test_member_type_and_date_range_use_a_member_type_index(store_with_rows, column):
    with connection.cursor() as cursor:
        cursor.execute(
            f"EXPLAIN SELECT body FROM pdex_resource WHERE member_id = ANY(%s) AND resource_type = %s "  # noqa: S608
            f"AND {column} >= now() - interval '5 years' AND {column} < now()",
            [store_with_rows, "Encounter"],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # resource_member_type_service / _updated: (member, type, date) — the planner picks either.
    assert "Index Cond: ((member_id = ANY" in plan and "resource_member_type_" in plan, plan
    assert "Seq Scan" not in plan, plan
