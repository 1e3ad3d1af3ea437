"""A chunk as it starts, the download gate and the withdrawal sweep judge again only the members whose consent
may have changed since the export was planned (consent.services.unsettled_members): a consent row that is no
longer the version the plan judged, a period that no longer covers today, a block, a partner row that is no
longer the version judged. What they
find is what judging everyone finds, in a fixed number of queries however many members a chunk or a file holds.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from consent.models import Consent
from consent.services import (
    block_member,
    decisions_for_members,
    partner_version,
    record_consent,
    revoke,
    unsettled_members,
)
from exports.withdrawal import ended_members, live_members
from pdex.models import Partner
from tests.builders import consent_for, consent_resource, days_ago, make_member

pytestmark = pytest.mark.django_db


def planned(partner, count: int):
    """`count` members with a consent for `partner`, judged as a plan judges them: the members, the consent
    versions judged (member → version) and the partner row's version."""
    members = [make_member(f"gate-{n}") for n in range(count)]
    for member in members:
        consent_for(member, partner)
    versions: dict[int, int] = {}
    decisions = decisions_for_members(partner, [m.pk for m in members], versions=versions)
    assert all(d.allowed for d in decisions.values()) and set(versions) == {m.pk for m in members}
    return members, versions, partner_version(partner)


def test_only_members_whose_consent_may_have_changed_since_the_plan_are_judged_again(partner):
    members, versions, at = planned(partner, 7)
    unchanged, edited, rewritten, expired, blocked, revoked, gone = members
    Consent.objects.filter(member=edited, partner=partner).update(policy_uri="x")  # no updated_at: a new version
    record_consent(rewritten, partner, consent_resource(rewritten.fhir_id, partner.npi), via="member-match")
    Consent.objects.filter(member=expired, partner=partner).update(period_end=days_ago(1).date())
    block_member(blocked, partner, "asked us to stop", actor="member line")
    revoke(Consent.objects.get(member=revoked, partner=partner), "member phoned", actor="member line")
    Consent.objects.filter(member=gone, partner=partner).delete()

    assert unsettled_members(partner, versions, partner_judged=at) == set(versions) - {unchanged.pk}
    assert ended_members(partner, versions, partner_judged=at) == {expired.pk, blocked.pk, revoked.pk, gone.pk}
    assert ended_members(partner, versions, partner_judged=at) == ended_members(partner, versions)  # as judging all


def test_a_consent_recorded_a_moment_before_the_plan_is_settled_and_one_changed_after_it_is_not(partner):
    """No clock is compared: the plan judged a row version, and any later write makes another, whatever time
    it stamps."""
    members, versions, at = planned(partner, 2)
    assert unsettled_members(partner, versions, partner_judged=at) == set()
    Consent.objects.filter(member=members[1], partner=partner).update(updated_at=timezone.now() - timedelta(days=1))
    assert unsettled_members(partner, versions, partner_judged=at) == {members[1].pk}


def test_a_chunk_planned_without_versions_has_every_member_judged(partner):
    members, _, at = planned(partner, 3)
    assert unsettled_members(partner, {m.pk: 0 for m in members}, partner_judged=at) == {m.pk for m in members}


def test_a_partner_edited_since_the_plan_has_every_member_judged_again(partner):
    _, versions, at = planned(partner, 3)
    assert unsettled_members(partner, versions, partner_judged=at) == set()
    assert unsettled_members(partner, versions, partner_judged=None) == set(versions)  # a job planned before
    with transaction.atomic():  # its own (sub)transaction, as an admin's edit is: a row version is per transaction
        Partner.objects.filter(pk=partner.pk).update(npi="1111111111")  # the consents name its old NPI
    partner.refresh_from_db()
    assert unsettled_members(partner, versions, partner_judged=at) == set(versions)
    assert ended_members(partner, versions, partner_judged=at) == set(versions)


def test_the_gate_costs_the_same_few_queries_for_ten_members_or_three_hundred(partner, django_assert_num_queries):
    members, versions, at = planned(partner, 300)
    Consent.objects.filter(member=members[7], partner=partner).update(period_end=days_ago(1).date())
    few = {m.pk: versions[m.pk] for m in members[:10]}
    with django_assert_num_queries(4):  # the partner version, settled consents, blocks, the one decision
        assert ended_members(partner, versions, partner_judged=at) == {members[7].pk}
    with django_assert_num_queries(4):
        assert ended_members(partner, few, partner_judged=at) == {members[7].pk}


def test_a_chunk_starting_keeps_the_plan_for_settled_members_and_judges_the_others_now(partner):
    members, versions, at = planned(partner, 4)
    unchanged, planned_regular, narrowed, revoked = members
    record_consent(narrowed, partner, consent_resource(narrowed.fhir_id, partner.npi, policy="regular"),
                   via="member-match")  # narrowed to #regular since the plan
    revoke(Consent.objects.get(member=revoked, partner=partner), "member phoned", actor="member line")

    ids = [m.pk for m in members]
    live = live_members(partner, ids, [planned_regular.pk], versions=[versions[m] for m in ids], partner_judged=at)
    assert live.member_ids == [unchanged.pk, planned_regular.pk, narrowed.pk]
    assert live.regular_member_ids == [planned_regular.pk, narrowed.pk]
    assert live.withdrawn == [revoked.pk]
    assert live == live_members(partner, ids, [planned_regular.pk])  # as judging everyone
