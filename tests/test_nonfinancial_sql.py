"""pdex_nonfinancial (exports migration 0002) on real claim EOBs and Claims: the first 300 of each in sample/."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pytest
from django.db import connection
from fhir.resources.R4B import get_fhir_model_class

from exports import rules
from tests.builders import SAMPLE

FINANCIAL_ROOT = {"payment", "total", "benefitBalance"}
FINANCIAL_LINE = {"net", "unitPrice", "factor"}
REAL_CLAIMS = 300


def real_claims(resource_type: str) -> list[dict]:
    with gzip.open(SAMPLE / f"{resource_type}.ndjson.gz", "rt") as lines:
        claims = [json.loads(line) for line in islice(lines, REAL_CLAIMS)]
    assert len(claims) == REAL_CLAIMS
    return claims


def nonfinancial(bodies: list[dict]) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pdex_nonfinancial(b)::text FROM jsonb_array_elements(%s::jsonb) "
                       "WITH ORDINALITY AS t(b, n) ORDER BY n", [json.dumps(bodies)])
        return [json.loads(row[0]) for row in cursor.fetchall()]


def lines_of(resource: dict):
    for line in (resource.get("item") or []) + (resource.get("addItem") or []):
        yield line
        for detail in line.get("detail") or []:
            yield detail
            yield from detail.get("subDetail") or []


@pytest.mark.django_db
@pytest.mark.parametrize("resource_type", ["ExplanationOfBenefit", "Claim"])
def test_real_claims_lose_every_amount_and_keep_the_rest(resource_type):
    originals = real_claims(resource_type)
    assert any(FINANCIAL_ROOT & set(r) for r in originals)  # the sample really carries amounts
    model = get_fhir_model_class(resource_type)
    for original, view in zip(originals, nonfinancial(originals), strict=True):
        assert not FINANCIAL_ROOT & set(view)
        for line in lines_of(view):
            assert not FINANCIAL_LINE & set(line)
            assert all("amount" not in a for a in line.get("adjudication") or [])
        assert "amount" not in json.dumps(view.get("adjudication") or [])
        kept = set(original) - FINANCIAL_ROOT - {"adjudication"}
        assert {k: original[k] for k in kept - {"item", "addItem"}} == {k: view[k] for k in kept - {"item", "addItem"}}
        assert len(view.get("item") or []) == len(original.get("item") or [])
        assert [i.get("productOrService") for i in view.get("item") or []] == [
            i.get("productOrService") for i in original.get("item") or []]
        model.model_validate_json(json.dumps(view))


@pytest.mark.django_db
def test_adjudication_with_a_reason_or_value_stays_without_its_amount():
    eob = {"resourceType": "ExplanationOfBenefit", "item": [{"sequence": 1, "adjudication": [
        {"category": {"text": "submitted"}, "amount": {"value": 5}},
        {"category": {"text": "denialreason"}, "reason": {"text": "n/a"}, "amount": {"value": 5}},
        {"category": {"text": "allowedunits"}, "value": 3}]}],
        "adjudication": [{"category": {"text": "benefit"}, "amount": {"value": 1}}]}
    [view] = nonfinancial([eob])
    assert view["item"][0]["adjudication"] == [
        {"category": {"text": "denialreason"}, "reason": {"text": "n/a"}},
        {"category": {"text": "allowedunits"}, "value": 3}]
    assert "adjudication" not in view


def test_export_uses_the_view_for_claims_only():
    assert "pdex_nonfinancial" in rules.body_sql("Claim")
    assert "preauthorization" in rules.body_sql("ExplanationOfBenefit")
    # The stored text first (exports migration 0011); the expression only for a row written without the trigger.
    assert rules.body_sql("Encounter") == "COALESCE(r.export_text, r.body::text)"
