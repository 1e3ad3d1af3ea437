"""Asynchronous $everything runs through the bulk export pipeline and writes what synchronous paging returns."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.utils import timezone

from exports import jobs
from exports.models import ExportJob
from tests.builders import consent_for, day, days_ago, days_from_now, encounter, load_sample_member, prior_auth, store
from tests.export_world import exported_lines

# The chunk writer streams on a connection of its own, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    from exports.writer import close_stream_connection

    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_WINDOW_MODE = "cap"
    settings.FHIR_BASE_URL = "http://testserver/fhir"
    yield
    close_stream_connection()


def export_and_pages(api, partner, path: str, query: str) -> tuple[dict, dict, set]:
    """Run $everything asynchronously through the export pipeline and synchronously by pages, same query."""
    response = api.get(f"{path}?{query}" if query else path, HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    job = ExportJob.objects.filter(partner=partner, kind=ExportJob.Kind.EVERYTHING).latest("created_at")
    for chunk_id in jobs.plan(job.id):
        jobs.run_chunk(chunk_id)
    jobs.finalize(job.id)  # what the control queue does once the last chunk is done
    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED
    exported = {}
    for line in exported_lines(job):
        resource = json.loads(line)
        exported[f"{resource['resourceType']}/{resource['id']}"] = resource

    paged, next_url = {}, f"{path}?{query}&_count=50" if query else f"{path}?_count=50"
    while next_url:
        bundle = api.get(next_url).json()
        for entry in bundle["entry"]:
            if entry["search"]["mode"] == "match":
                resource = entry["resource"]
                paged[f"{resource['resourceType']}/{resource['id']}"] = resource
        link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        next_url = f"{urlsplit(link).path}?{urlsplit(link).query}" if link else None
    # The export adds its own transmitter Provenance per chunk, and our Organization they name (as the pages do).
    generated = {key for key, r in exported.items() if r["resourceType"] == "Provenance"
                 and r["agent"][0]["type"]["coding"][0]["code"] == "transmitter"}
    payer = f"Organization/{settings.PAYER_ORGANIZATION_ID}"
    if payer in exported and payer not in paged:  # not in this member's stored data: the pages generate it too
        generated.add(payer)
    return exported, paged, generated


def test_async_everything_writes_the_same_resources_as_the_pages(api, partner):
    member = load_sample_member()
    recent = timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    store(encounter("async-sensitive", member.fhir_id, recent, security=("PSY",)), member)
    store(prior_auth("async-pa", member.fhir_id, "approved", changed=recent, period_end=days_from_now(365)), member)
    consent_for(member, partner, policy="regular")

    exported, paged, generated = export_and_pages(api, partner, f"/fhir/Patient/{member.fhir_id}/$everything", "")
    assert generated
    # Everything but the generated Provenance is the same, byte for byte.
    assert {k: v for k, v in exported.items() if k not in generated} == paged
    assert "ExplanationOfBenefit/async-pa" in paged and "Encounter/async-sensitive" not in paged


def test_async_everything_bounds_the_date_of_service_like_the_pages(api, partner):
    member = load_sample_member()
    start, end = day(days_ago(730)), day(days_ago(365))   # the year before last, always inside the window
    store(encounter("async-in-range", member.fhir_id, days_ago(500)), member)
    store(encounter("async-out-of-range", member.fhir_id, days_ago(300)), member)
    consent_for(member, partner, policy="sensitive")

    exported, paged, generated = export_and_pages(
        api, partner, f"/fhir/Patient/{member.fhir_id}/$everything", f"start={start}&end={end}&_type=Encounter")
    assert {k: v for k, v in exported.items() if k not in generated} == paged
    assert "Encounter/async-in-range" in paged and "Encounter/async-out-of-range" not in paged
