"""The member-match failure budget (matching/budget.py): one per partner across $member-match and
$bulk-member-match, reserved atomically before anything is evaluated, refunded for members that match."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from matching import budget, jobs
from matching.models import MatchEntry, MatchJob
from tests.builders import EXAMPLE_PAYER_NPI, bulk_match_request, example, example_members
from tests.conftest import issue_token

MEMBER_MATCH = "/fhir/Patient/$member-match"
BULK = "/fhir/Group/$bulk-member-match"


@pytest.fixture(autouse=True)
def our_plan(settings):
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    settings.MEMBER_MATCH_MAX_FAILURES = 20
    settings.MEMBER_MATCH_FAILURE_WINDOW_SECONDS = 3600


def nobody_single(n: int) -> dict:
    """The $member-match example for a person we do not have (birth date moved, card unknown)."""
    body = copy.deepcopy(example("member-match-request.json"))
    for parameter in body["parameter"]:
        if parameter["name"] == "MemberPatient":
            parameter["resource"]["birthDate"] = f"19{10 + n % 80:02d}-01-01"
        if parameter["name"] == "CoverageToMatch":
            parameter["resource"]["identifier"][0]["value"] = f"NOBODY{n}"
    return body


def nobody_bulk(n: int, members: int = 1) -> dict:
    request = bulk_match_request()
    bundle = request["parameter"][0]
    bundles = []
    for i in range(members):
        copied = copy.deepcopy(bundle)
        for part in copied["part"]:
            if part["name"] == "MemberPatient":
                part["resource"]["birthDate"] = f"19{10 + (n + i) % 80:02d}-02-02"
            if part["name"] == "CoverageToMatch":
                part["resource"]["identifier"][0]["value"] = f"NOBODY-B{n}-{i}"
        bundles.append(copied)
    return {"resourceType": "Parameters", "parameter": bundles}


def test_fifty_concurrent_failing_requests_admit_at_most_the_budget(transactional_db, partner):
    """50 requests at once, half $member-match and half $bulk-member-match, every one a non-member, against a
    budget of 20: at most 20 admitted, the rest 429 with Retry-After, and the counter never over 20."""
    token = issue_token(partner)

    def one(n: int) -> tuple[int, str]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        try:
            if n % 2:
                response = client.post(MEMBER_MATCH, data=json.dumps(nobody_single(n)),
                                       content_type="application/fhir+json")
            else:
                response = client.post(BULK, data=json.dumps(nobody_bulk(n)), content_type="application/fhir+json",
                                       HTTP_PREFER="respond-async")
            return response.status_code, response.get("Retry-After", "")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(one, range(50)))
    admitted = [status for status, _ in answers if status != 429]
    assert sorted(set(admitted)) <= [202, 422], answers
    assert len(admitted) == 20, answers
    assert all(int(retry) > 0 for status, retry in answers if status == 429)
    assert budget.used(partner) == 20
    # Run every accepted bulk job: their non-matches stay counted, nothing is given back.
    for job in MatchJob.objects.filter(partner=partner):
        for batch_id in jobs.plan(str(job.pk)):
            jobs.run_batch(batch_id)
    assert MatchEntry.objects.filter(job__partner=partner, outcome=MatchEntry.Outcome.NO_MATCH).exists()
    assert budget.used(partner) == 20


def test_a_bulk_request_beyond_the_remaining_budget_is_refused_before_any_member_is_evaluated(
        api, partner, monkeypatch):
    evaluated = []
    monkeypatch.setattr(jobs, "evaluate_entries", lambda *a, **k: evaluated.append(a) or [])
    for n in range(15):
        assert api.post(MEMBER_MATCH, data=json.dumps(nobody_single(n)),
                        content_type="application/fhir+json").status_code == 422
    response = api.post(BULK, data=json.dumps(nobody_bulk(100, members=6)), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert response.json()["issue"][0]["code"] == "throttled"
    assert not MatchJob.objects.filter(partner=partner).exists() and not evaluated
    assert budget.used(partner) == 15  # the refused request reserved nothing
    response = api.post(BULK, data=json.dumps(nobody_bulk(200, members=5)), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 202
    assert api.post(MEMBER_MATCH, data=json.dumps(nobody_single(99)),
                    content_type="application/fhir+json").status_code == 429


def test_matched_members_give_their_reservation_back(transactional_db, api, partner):
    example_members()
    response = api.post(BULK, data=json.dumps(bulk_match_request()), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 202
    assert budget.used(partner) == 4  # the example's four members, reserved up front
    job = MatchJob.objects.get(partner=partner)
    for batch_id in jobs.plan(str(job.pk)):
        jobs.run_batch(batch_id)
    job.refresh_from_db()
    assert job.matched >= 1
    assert budget.used(partner) == 4 - job.matched


def test_the_budget_is_per_partner(api, partner, make_partner, api_for):
    other = api_for(make_partner("Other Plan"))
    for n in range(20):
        api.post(MEMBER_MATCH, data=json.dumps(nobody_single(n)), content_type="application/fhir+json")
    assert api.post(MEMBER_MATCH, data=json.dumps(nobody_single(50)),
                    content_type="application/fhir+json").status_code == 429
    assert other.post(MEMBER_MATCH, data=json.dumps(nobody_single(50)),
                      content_type="application/fhir+json").status_code == 422


def test_an_admin_may_give_a_partner_a_budget_of_its_own(api, partner, monkeypatch):
    monkeypatch.setattr(jobs, "evaluate_entries", lambda *a, **k: [])
    partner.match_failure_budget = 3
    partner.save(update_fields=["match_failure_budget"])
    response = api.post(BULK, data=json.dumps(nobody_bulk(300, members=4)), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 429  # 4 members do not fit its 3, though the deployment's 20 would take them
    partner.match_failure_budget = 100
    partner.save(update_fields=["match_failure_budget"])
    response = api.post(BULK, data=json.dumps(nobody_bulk(400, members=30)), content_type="application/fhir+json",
                        HTTP_PREFER="respond-async")
    assert response.status_code == 202  # 30 members: beyond the deployment's 20, within its own 100
    assert budget.used(partner) == 30
