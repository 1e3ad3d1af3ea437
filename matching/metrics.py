"""Bulk member match's family of /metrics (pdex.metrics): members decided per outcome, summed over the jobs."""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.db.models import Sum
from prometheus_client.core import CounterMetricFamily, Metric


def match_families() -> Iterable[Metric]:
    outcomes = CounterMetricFamily("pdex_bulk_match_members", "Members of $bulk-member-match requests, per outcome",
                                   labels=["outcome"])
    jobs = apps.get_model("matching", "MatchJob")  # registered before models load
    totals = jobs.objects.aggregate(match=Sum("matched"), nomatch=Sum("no_match"),
                                        consentconstraint=Sum("consent_constrained"))
    for outcome, total in totals.items():
        outcomes.add_metric([outcome], total or 0)
    return [outcomes]
