"""The exports' families of /metrics (pdex.metrics): resources and bytes written per resource type.

Summed at scrape time over every export job's per-type counts and sizes, recorded when the job finished
(`ExportJob.counts`, `ExportJob.sizes`): correct however many workers wrote them, on however many machines.
A job keeps its figures after a partner deletes it (cancelled after completion); an admin's re-run starts
that job's figures again, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.db import connection
from prometheus_client.core import CounterMetricFamily, Metric


def export_families() -> Iterable[Metric]:
    resources = CounterMetricFamily("pdex_export_resources", "Resources written by exports, per resource type",
                                    labels=["resource_type"])
    written = CounterMetricFamily("pdex_export_bytes", "Bytes of NDJSON written by exports, per resource type",
                                  labels=["resource_type"])
    table = apps.get_model("exports", "ExportJob")._meta.db_table  # registered before models load
    for family, column in ((resources, "counts"), (written, "sizes")):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT figure.key, sum(figure.value::bigint) FROM {table}, "  # noqa: S608
                           f"jsonb_each_text({column}) AS figure GROUP BY figure.key ORDER BY figure.key")
            for resource_type, total in cursor.fetchall():
                family.add_metric([resource_type], total)
    return [resources, written]
