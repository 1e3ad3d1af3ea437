"""The stored text a partner receives (exports migration 0011): kept current by every write path."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from pdex.ingest import load_resources
from pdex.models import Resource
from tests.builders import claim_eob, document, make_member, prior_auth, store, years_ago


def stored(resource_type: str, fhir_id: str) -> tuple[dict, list[str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT export_text, pa_documents FROM pdex_resource WHERE resource_type = %s AND fhir_id = %s",
                       [resource_type, fhir_id])
        text, documents = cursor.fetchone()
    return json.loads(text), documents


def nonfinancial(body: dict) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pdex_nonfinancial(%s::jsonb)::text", [json.dumps(body)])
        return json.loads(cursor.fetchone()[0])


@pytest.mark.django_db
def test_an_orm_write_stores_the_non_financial_view_and_an_update_refreshes_it():
    member = make_member("p1")
    eob = claim_eob("eob-1", "p1", years_ago(1))
    row = store(eob, member)
    text, documents = stored("ExplanationOfBenefit", "eob-1")
    assert "payment" not in text and "total" not in text
    assert text == nonfinancial(eob) and documents == []
    row.body = {**eob, "status": "cancelled"}
    row.save()
    assert stored("ExplanationOfBenefit", "eob-1")[0]["status"] == "cancelled"
    Resource.objects.filter(pk=row.pk).update(member=None)  # a column the text does not read: left as it was
    assert stored("ExplanationOfBenefit", "eob-1")[0]["status"] == "cancelled"


@pytest.mark.django_db
def test_load_ndjson_stores_the_text_and_the_documents_a_prior_authorization_cites():
    pa = prior_auth("pa-1", "p1", "approved", changed=years_ago(1), documents=("doc-a", "doc-b"))
    doc = document("doc-a", "p1", years_ago(1))
    load_resources([pa, doc], validate=False)
    text, documents = stored("ExplanationOfBenefit", "pa-1")
    assert text == pa  # a PA is exported whole
    assert sorted(documents) == ["DocumentReference/doc-a", "DocumentReference/doc-b"]
    assert stored("DocumentReference", "doc-a") == (doc, [])
    load_resources([{**pa, "supportingInfo": pa["supportingInfo"][:1]}], validate=False)  # the upsert path
    assert stored("ExplanationOfBenefit", "pa-1")[1] == ["DocumentReference/doc-a"]


@pytest.mark.django_db
def test_a_raw_sql_write_is_covered_too():
    member = make_member("p1")
    store(claim_eob("eob-2", "p1", years_ago(1)), member)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pdex_resource SET body = body || '{\"status\": \"entered-in-error\"}'"
                       " WHERE fhir_id = 'eob-2'")
    text, _ = stored("ExplanationOfBenefit", "eob-2")
    assert text["status"] == "entered-in-error" and "payment" not in text
