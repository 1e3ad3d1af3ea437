"""Admin of the requesting side: our staff collect a consent in a form, see every pull with its stages and
counts, the members a previous payer did not match with what to do, revoke, and re-run a pull."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from requesting import keys
from requesting.models import CollectedConsent, PreviousPayer, PullJob, PullMember, PullUnit
from requesting.pull.stages import ACTIONS
from tests.builders import make_member

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, settings):
    settings.PAYER_NPI = "1999999999"
    user = get_user_model().objects.create_superuser("clerk", "clerk@example.org", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def payer() -> PreviousPayer:
    return PreviousPayer.objects.create(name="Old Plan", npi="1234567893", fhir_base_url="https://old.example/fhir",
                                        client_id="c-1", token_endpoint="https://old.example/oauth/token")


def test_staff_collect_a_consent_whose_period_follows_the_scenario(staff, payer):
    member = make_member("np-1")
    start = timezone.localdate()
    response = staff.post(reverse("admin:requesting_collectedconsent_add"), {
        "member": member.pk, "previous_payer": payer.pk, "policy": "regular", "scenario": "enrollment",
        "coverage_start": start.isoformat(), "old_member_id": "M123", "old_relationship": "self",
        "representative_name": "Pat Doe", "representative_role": "HPOWATT", "representative_relationship": "SPS"})
    assert response.status_code == 302, response.content.decode()[:3000]
    consent = CollectedConsent.objects.get(member=member)
    assert (consent.period_start, consent.period_end) == (start, start + timedelta(days=90))
    assert consent.resource["contained"][0]["resourceType"] == "RelatedPerson"
    assert staff.get(reverse("admin:requesting_collectedconsent_change", args=[consent.pk])).status_code == 200
    refused = staff.post(reverse("admin:requesting_collectedconsent_add"), {
        "member": member.pk, "previous_payer": payer.pk, "policy": "regular", "scenario": "concurrent",
        "coverage_start": start.isoformat(), "old_relationship": "self"})
    assert refused.status_code == 200 and b"needs the end of the other plan" in refused.content
    staff.post(reverse("admin:requesting_collectedconsent_changelist"),
               {"action": "revoke", "_selected_action": [consent.pk]})
    consent.refresh_from_db()
    assert consent.status == CollectedConsent.Status.REVOKED


def test_a_pull_shows_its_stages_counts_and_the_members_to_act_on_and_can_run_again(staff, payer):
    member = make_member("np-1")
    today = timezone.localdate()
    consent = CollectedConsent.objects.create(
        member=member, previous_payer=payer, policy="sensitive", period_start=today,
        period_end=today + timedelta(days=90), coverage_start=today, old_member_id="M1", resource={}, collected_via="t")
    job = PullJob.objects.create(previous_payer=payer, status=PullJob.Status.COMPLETED, stage=PullJob.Stage.DONE,
                                 members=1, no_match=1, received={"Encounter": 3}, ingested={"Encounter": 2},
                                 unchanged={"Encounter": 1}, notes=["Encounter: line 3: invalid"])
    PullUnit.objects.create(job=job, sequence=0, step=PullUnit.Step.MATCH, status=PullUnit.Status.DONE)
    PullMember.objects.create(job=job, member=member, consent=consent, outcome=PullMember.Outcome.NO_MATCH,
                              action=ACTIONS[PullMember.Outcome.NO_MATCH])
    page = staff.get(reverse("admin:requesting_pulljob_change", args=[job.pk])).content.decode()
    assert "Encounter: 3 / 2 / 1 / 0" in page and "1 to act on" in page and "line 3: invalid" in page
    members = staff.get(reverse("admin:requesting_pullmember_changelist") + f"?job__id__exact={job.pk}"
                        "&outcome__in=nomatch,consentconstraint").content.decode()
    assert "check the old card" in members
    for name in ("pulljob", "previouspayer", "signingkey", "memberlink", "collectedconsent"):
        assert staff.get(reverse(f"admin:requesting_{name}_changelist")).status_code == 200
    keys.active_key()
    assert staff.get(reverse("admin:requesting_signingkey_changelist")).status_code == 200
    staff.post(reverse("admin:requesting_pulljob_changelist"), {"action": "rerun", "_selected_action": [job.pk]})
    again = PullJob.objects.exclude(pk=job.pk).get()
    assert list(again.pull_members.values_list("member_id", flat=True)) == [member.pk]
