"""POST /fhir/Group/$bulk-member-match: synchronous validation, then each member lands in the right Group."""

from __future__ import annotations

import copy
import gc
import json
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from consent.models import Consent
from matching import groups, jobs, services
from matching.models import GroupMember, MatchBatch, MatchEntry, MatchJob, MemberMatchGroup
from pdex.jobs import asyncstatus
from pdex.jobs.models import OutputFile
from pdex.jobs.storage import get_storage
from pdex.models import Member
from tests.builders import EXAMPLE_PARTNER_NPI, EXAMPLE_PAYER_NPI, example, example_members

URL = "/fhir/Group/$bulk-member-match"
# The example replayed on its own match date (the run date its response Groups carry): its consents cover
# calendar 2026 and member 4's expired in 2025, so every date these tests compare is the example's, none the clock's.
RUN_AT = datetime(2026, 7, 15, 13, 45, tzinfo=UTC)


@pytest.fixture(autouse=True)
def our_plan(settings):
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.PAYER_NAME = "Old Health Plan"
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    settings.CONSENT_CAN_SEGMENT_SENSITIVE = True
    settings.MATCH_BATCH_SIZE = 2


@pytest.fixture
def members(db) -> dict[str, Member]:
    return example_members()


def kick_off(client: APIClient, body, *, prefer: str | None = "respond-async"):
    headers = {"HTTP_PREFER": prefer} if prefer else {}
    return client.post(URL, data=json.dumps(body), content_type="application/fhir+json", **headers)


def run_job(job: MatchJob, *, at: datetime = RUN_AT) -> MatchJob:
    """What the Celery tasks do, in order, in this process: plan, every batch, finish."""
    MatchJob.objects.filter(pk=job.pk).update(transaction_time=at)
    states = [jobs.run_batch(batch_id).state for batch_id in jobs.plan(str(job.pk))]
    assert states.count("last") == 1 and states[-1] == "last"
    assert jobs.finish(str(job.pk))
    job.refresh_from_db()
    return job


def read_output(job: MatchJob, resource_type: str) -> bytes:
    output = OutputFile.objects.get(job_id=job.pk, resource_type=resource_type)
    return b"".join(get_storage().read(output.storage_key))


def comparable(group: dict, references: dict[str, str]) -> dict:
    """A Group without what legitimately differs between servers: ids, meta timestamps, quantity."""
    group = copy.deepcopy(group)
    group.pop("id", None)
    group.pop("quantity", None)
    group["meta"] = {"profile": group["meta"]["profile"]}
    for member in group.get("member", []):
        reference = member["entity"]["reference"]
        member["entity"]["reference"] = references.get(reference, reference)
    return group


def test_example_request_matches_the_constructed_example_response(api, members, partner):
    response = kick_off(api, example("bulk-member-match-request.json"))
    assert response.status_code == 202, response.content
    job = MatchJob.objects.get(partner=partner)
    assert response["Content-Location"] == asyncstatus.status_url(job)
    assert job.entries.count() == 4 and job.progress_total == 4

    job = run_job(job)
    assert (job.status, job.progress_done, job.matched, job.no_match, job.consent_constrained) == (
        "completed", 4, 2, 1, 1)
    envelope = json.loads(read_output(job, "Parameters"))
    expected = example("bulk-member-match-response.constructed.parameters.json")
    ours = {"Patient/pat-1001": "Patient/1001", "Patient/pat-2002": "Patient/2002"}
    assert [p["name"] for p in envelope["parameter"]] == [p["name"] for p in expected["parameter"]]
    for got, want in zip(envelope["parameter"], expected["parameter"], strict=True):
        assert comparable(got["resource"], ours) == comparable(want["resource"], {})
    assert envelope["meta"]["profile"] == expected["meta"]["profile"]


def test_groups_are_persisted_and_only_matched_members_are_members(api, members, partner):
    kick_off(api, example("bulk-member-match-request.json"))
    job = run_job(MatchJob.objects.get(partner=partner))
    stored = {g.code: g for g in MemberMatchGroup.objects.filter(job=job)}
    assert set(stored) == {"match", "nomatch", "consentconstraint"}
    assert all(g.partner == partner for g in stored.values())
    assert set(GroupMember.objects.filter(group=stored["match"]).values_list("member__fhir_id", flat=True)) == {
        "pat-1001", "pat-2002"}
    assert not GroupMember.objects.filter(group__in=[stored["nomatch"], stored["consentconstraint"]]).exists()
    constrained = json.dumps(stored["consentconstraint"].resource)
    assert "pat-4004" not in constrained and "UMB-" not in constrained
    assert set(Consent.objects.filter(partner=partner).values_list("member__fhir_id", flat=True)) == {
        "pat-1001", "pat-2002"}
    for consent in Consent.objects.filter(partner=partner):  # each with its history: received, then decided
        decided = f"{'comply-all' if consent.policy == 'sensitive' else 'comply-non-sensitive'} (complies)"
        assert list(consent.events.values_list("action", "actor", "detail")) == [
            ("received", str(partner), "received via bulk-member-match"), ("decided", "service", decided)]
    files = {f.resource_type: f for f in OutputFile.objects.filter(job_id=job.pk)}
    assert (files["Group"].count, files["Parameters"].count) == (3, 1)
    manifest = asyncstatus.build_manifest(job)
    assert [item["type"] for item in manifest["output"]] == ["Group", "Parameters"] and manifest["error"] == []


def test_a_large_kick_off_keeps_the_cycle_collector_off_and_frees_its_body(api, members, partner, settings,
                                                                          monkeypatch):
    """A 10,000-member body is millions of parsed objects: no collection may walk them while the view reads
    them, and when the collector comes back they are gone (freed by reference counting, not left in DRF's
    Request cycle for a later full collection to find)."""
    settings.MEMBER_MATCH_MAX_FAILURES = 10_000
    request = example("bulk-member-match-request.json")
    request["parameter"] = request["parameter"] * 500  # 2,000 MemberBundles: about 200,000 containers
    body = json.dumps(request)
    collections: list[int] = []
    collector_on_while_read: list[bool] = []
    start = jobs.start_bulk_match

    def spy(**kwargs):
        collector_on_while_read.append(gc.isenabled())
        return start(**kwargs)

    monkeypatch.setattr(jobs, "start_bulk_match", spy)

    def note(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    tracked_before = len(gc.get_objects())
    gc.callbacks.append(note)
    try:
        response = api.post(URL, data=body, content_type="application/fhir+json", HTTP_PREFER="respond-async")
    finally:
        gc.callbacks.remove(note)
    still_alive = len(gc.get_objects()) - tracked_before
    assert response.status_code == 202, response.content
    assert gc.isenabled()
    assert MatchJob.objects.get(partner=partner).entries.count() == 2000
    assert collector_on_while_read == [False]
    assert 2 not in collections, collections  # no full collection walked the body
    assert still_alive < 20_000, still_alive


def bundle_of(request: dict, index: int) -> dict:
    return copy.deepcopy(request["parameter"][index])


def test_mixed_request_each_member_lands_in_its_group_and_bad_members_do_not_fail_the_batch(
        api, members, partner):
    request = example("bulk-member-match-request.json")
    no_birth_date = bundle_of(request, 0)
    del no_birth_date["part"][0]["resource"]["birthDate"]
    no_coverage = bundle_of(request, 1)
    no_coverage["part"] = [p for p in no_coverage["part"] if p["name"] != "CoverageToMatch"]
    unknown_policy = bundle_of(request, 1)
    next(p for p in unknown_policy["part"] if p["name"] == "Consent")["resource"]["policy"] = [
        {"uri": "http://example.org/some-other-policy"}]
    unknown_policy["part"][0]["resource"]["id"] = "2b"
    wrong_payor = bundle_of(request, 0)
    wrong_payor["part"][1]["resource"]["payor"][0]["identifier"]["value"] = "1111111111"
    wrong_payor["part"][0]["resource"]["id"] = "1b"
    body = {"resourceType": "Parameters", "parameter": [
        bundle_of(request, 0), no_birth_date, no_coverage, unknown_policy, wrong_payor, bundle_of(request, 3),
        bundle_of(request, 2)]}
    kick_off(api, body)
    job = run_job(MatchJob.objects.get(partner=partner))
    outcomes = list(MatchEntry.objects.filter(job=job).order_by("index").values_list("outcome", flat=True))
    assert outcomes == ["match", "nomatch", "nomatch", "consentconstraint", "nomatch", "consentconstraint",
                        "nomatch"]
    reason = MatchEntry.objects.get(job=job, index=3).reason
    assert "unknown policy" in reason


def test_same_patient_id_twice_is_contained_once_with_coverages(api, members, partner):
    request = example("bulk-member-match-request.json")
    second = bundle_of(request, 0)
    second["part"][1]["resource"]["id"] = "coverage-1-other"
    kick_off(api, {"resourceType": "Parameters", "parameter": [bundle_of(request, 0), second]})
    job = run_job(MatchJob.objects.get(partner=partner))
    matched = MemberMatchGroup.objects.get(job=job, code="match").resource
    assert [c["id"] for c in matched["contained"]] == ["1", "coverage-1", "coverage-1-other"]
    coverage_refs = [e["valueReference"]["reference"] for m in matched["member"] for e in m["entity"]["extension"]
                     if e["url"] == groups.EXT_COVERAGE]
    assert coverage_refs == ["#coverage-1", "#coverage-1-other"]
    assert GroupMember.objects.filter(group__job=job).count() == 1


def test_contained_patients_are_cleaned():
    patient = {"resourceType": "Patient", "id": "p", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z",
                                                              "security": [{"code": "R"}], "profile": ["x"]},
               "contained": [{"resourceType": "Organization", "id": "o"}], "birthDate": "2000-01-01"}
    assert groups.clean_contained(patient) == {"resourceType": "Patient", "id": "p", "meta": {"profile": ["x"]},
                                               "birthDate": "2000-01-01"}


def test_empty_match_group_is_always_emitted(api, partner, db):
    request = example("bulk-member-match-request.json")
    kick_off(api, {"resourceType": "Parameters", "parameter": [bundle_of(request, 2)]})
    job = run_job(MatchJob.objects.get(partner=partner))
    matched = MemberMatchGroup.objects.get(job=job, code="match").resource
    assert matched["member"] == [] and matched["quantity"] == 0
    assert matched["characteristic"][0]["valueReference"]["identifier"]["value"] == EXAMPLE_PARTNER_NPI


def test_batches_are_idempotent_and_counted_once(api, members, partner):
    kick_off(api, example("bulk-member-match-request.json"))
    job = MatchJob.objects.get(partner=partner)
    MatchJob.objects.filter(pk=job.pk).update(transaction_time=RUN_AT)
    first, second = jobs.plan(str(job.pk))
    assert list(MatchBatch.objects.filter(job=job).order_by("sequence").values_list("start", "end")) == [
        (0, 2), (2, 4)]
    assert jobs.run_batch(first).state == "done"
    assert jobs.run_batch(first).state == "idle"  # delivered twice: nothing left to do
    assert jobs.run_batch(second).state == "last"
    assert jobs.finish(str(job.pk)) and not jobs.finish(str(job.pk))
    job.refresh_from_db()
    assert (job.progress_done, job.matched + job.no_match + job.consent_constrained) == (4, 4)
    assert MemberMatchGroup.objects.filter(job=job).count() == 3


def test_cancelled_job_stops_work(api, members, partner):
    kick_off(api, example("bulk-member-match-request.json"))
    job = MatchJob.objects.get(partner=partner)
    batches = jobs.plan(str(job.pk))
    asyncstatus.cancel_job(job)
    assert [jobs.run_batch(b).state for b in batches] == ["idle", "idle"]
    assert not MatchEntry.objects.filter(job=job).exclude(outcome="pending").exists()
    assert not jobs.finish(str(job.pk))


def test_prefer_respond_async_is_required(api, members):
    response = kick_off(api, example("bulk-member-match-request.json"), prefer=None)
    assert response.status_code == 400 and "respond-async" in response.content.decode()
    assert not MatchJob.objects.exists()


@pytest.mark.parametrize("body,status,text", [
    ({"resourceType": "Patient"}, 400, "Parameters"),
    ({"resourceType": "Parameters", "parameter": [{"name": "Other", "valueString": "x"}]}, 422, "MemberBundle"),
    ({"resourceType": "Parameters", "parameter": [{"name": "MemberBundle", "part": [
        {"name": "MemberPatient", "valueString": "not a resource"}]}]}, 422, "must carry a resource"),
    ({"resourceType": "Parameters", "parameter": [{"name": "MemberBundle", "part": [
        {"name": "Consent", "resource": {"resourceType": "Consent"}}]}]}, 422, "no MemberPatient"),
])
def test_structural_errors_fail_the_whole_request(api, body, status, text):
    response = kick_off(api, body)
    assert response.status_code == status and text in response.content.decode()
    assert response.json()["resourceType"] == "OperationOutcome"
    assert not MatchJob.objects.exists()


def test_either_bulk_scope_spelling_and_post_only(partner, api_for, members):
    lower = api_for(partner, "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match")
    assert kick_off(lower, example("bulk-member-match-request.json")).status_code == 202
    assert lower.get(URL).status_code == 405
    match_only = api_for(partner, "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match")
    assert kick_off(match_only, example("bulk-member-match-request.json")).status_code == 403


def test_a_member_that_breaks_the_matcher_does_not_fail_the_batch(api, members, partner, monkeypatch):
    real_match = services.match

    def fragile(submitted, candidates):
        if submitted.family == "smith":
            raise ValueError("odd data")
        return real_match(submitted, candidates)

    monkeypatch.setattr(services, "match", fragile)
    kick_off(api, example("bulk-member-match-request.json"))
    job = run_job(MatchJob.objects.get(partner=partner))
    outcomes = list(MatchEntry.objects.filter(job=job).order_by("index").values_list("outcome", flat=True))
    assert outcomes == ["match", "nomatch", "nomatch", "consentconstraint"]


def test_a_failed_job_answers_with_its_operation_outcome(api, members, partner, monkeypatch, settings):
    def broken(*args, **kwargs):
        raise RuntimeError("storage down")

    monkeypatch.setattr(jobs, "evaluate_entries", broken)
    settings.JOB_MAX_ATTEMPTS = 2
    kick_off(api, example("bulk-member-match-request.json"))
    job = MatchJob.objects.get(partner=partner)
    first = jobs.plan(str(job.pk))[0]
    assert jobs.run_batch(first).state == "retry"
    MatchBatch.objects.filter(pk=first).update(not_before=None)  # its back-off has passed
    assert jobs.run_batch(first).state == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and job.error["resourceType"] == "OperationOutcome"
    assert "storage down" not in json.dumps(job.error)  # the cause stays in the log and on the batch
    answer = asyncstatus.poll(job.pk, partner=partner)
    assert answer.http_status == 500 and answer.body == job.error
    assert jobs.run_batch().state == "idle"
