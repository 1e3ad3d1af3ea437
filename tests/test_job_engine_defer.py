"""A unit of work that waits on another server (a previous payer's job still running, its 429) goes back
without counting an attempt and is not claimed again before it is due; a job without a partner (a pull) runs
on the engine like any other and fails with its reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pdex.jobs import engine
from pdex.jobs.asyncstatus import job_models
from requesting.kind import PULL
from requesting.models import PreviousPayer, PullJob, PullUnit

pytestmark = pytest.mark.django_db


@pytest.fixture
def unit() -> PullUnit:
    payer = PreviousPayer.objects.create(name="Old", npi="1234567893", fhir_base_url="https://old.example/fhir")
    job = PullJob.objects.create(previous_payer=payer, status=PullJob.Status.RUNNING, progress_total=1)
    return PullUnit.objects.create(job=job, sequence=0, step=PullUnit.Step.MATCH)


def test_a_deferred_unit_is_due_again_later_and_its_wait_is_no_attempt(unit):
    def wait(claimed, beat):
        raise engine.Deferred(30, note="their match is running: members 3/10")

    outcome = engine.run_one(PULL, wait, lambda *args: None)
    assert (outcome.state, outcome.retry_in) == ("deferred", 30)
    unit.refresh_from_db()
    assert (unit.status, unit.attempts, unit.error) == ("pending", 0, "their match is running: members 3/10")
    assert engine.claim(PULL, "w") is None
    later = engine.claim(PULL, "w", now=timezone.now() + timedelta(seconds=31))
    assert later.pk == unit.pk and later.attempts == 1


def test_a_job_without_a_partner_fails_with_its_reason_and_is_never_served_at_the_status_url(unit):
    assert engine.fail_job(PULL, unit.job_id, "the previous payer refused: 403")
    unit.job.refresh_from_db()
    assert unit.job.status == "failed" and "403" in unit.job.error["issue"][0]["diagnostics"]
    assert PullJob not in job_models()
