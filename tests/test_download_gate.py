"""A chunk as it starts, the download gate and the withdrawal sweep judge again only the members whose consent
may have changed since the export was planned (consent.services.unsettled_members): what they find is what
judging everyone finds, in a fixed number of queries however many members a chunk or a file holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from consent.models import Consent
from consent.services import block_member, record_consent, revoke, unsettled_members
from exports.withdrawal import ended_members, live_members
from pdex.models import Partner
from tests.builders import consent_for, consent_resource, days_ago, make_member

pytestmark = pytest.mark.django_db


def planned_an_hour_ago(partner, count: int):
    """`count` members with a consent for `partner`, all recorded before an export planned an hour ago."""
    members = [make_member(f"gate-{n}") for n in range(count)]
    for member in members:
        consent_for(member, partner)
    Consent.objects.filter(partner=partner).update(updated_at=timezone.now() - timedelta(hours=2))
    Partner.objects.filter(pk=partner.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    partner.refresh_from_db()
    return members, timezone.now() - timedelta(hours=1)


def test_only_members_whose_consent_facts_changed_since_the_plan_are_judged_again(partner):
    members, planned = planned_an_hour_ago(partner, 6)
    unchanged, edited, expired, blocked, revoked, gone = members
    Consent.objects.filter(member=edited, partner=partner).update(updated_at=timezone.now())
    Consent.objects.filter(member=expired, partner=partner).update(period_end=days_ago(1).date())
    block_member(blocked, partner, "asked us to stop", actor="member line")
    revoke(Consent.objects.get(member=revoked, partner=partner), "member phoned", actor="member line")
    Consent.objects.filter(member=gone, partner=partner).delete()

    ids = {m.pk for m in members}
    assert unsettled_members(partner, ids, since=planned) == ids - {unchanged.pk}
    assert ended_members(partner, ids, allowed_at=planned) == {expired.pk, blocked.pk, revoked.pk, gone.pk}
    assert ended_members(partner, ids, allowed_at=planned) == ended_members(partner, ids)  # as judging everyone


def test_a_consent_changed_just_before_the_plan_is_judged_again(partner):
    """Its row may have been stamped by a host whose clock lags the planner's."""
    members, planned = planned_an_hour_ago(partner, 2)
    Consent.objects.filter(member=members[0], partner=partner).update(updated_at=planned - timedelta(seconds=30))
    assert unsettled_members(partner, {m.pk for m in members}, since=planned) == {members[0].pk}


def test_a_partner_edited_since_the_plan_has_every_member_judged_again(partner):
    members, planned = planned_an_hour_ago(partner, 3)
    partner.npi = "1111111111"  # the consents name its old NPI as recipient: nobody may receive now
    partner.save()
    ids = {m.pk for m in members}
    assert unsettled_members(partner, ids, since=planned) == ids
    assert ended_members(partner, ids, allowed_at=planned) == ids


def test_the_gate_costs_the_same_few_queries_for_ten_members_or_three_hundred(partner, django_assert_num_queries):
    members, planned = planned_an_hour_ago(partner, 300)
    Consent.objects.filter(member=members[7], partner=partner).update(period_end=days_ago(1).date())
    with django_assert_num_queries(3):  # settled consents, blocks, then the one unsettled member's decision
        assert ended_members(partner, [m.pk for m in members], allowed_at=planned) == {members[7].pk}
    with django_assert_num_queries(3):
        assert ended_members(partner, [m.pk for m in members[:10]], allowed_at=planned) == {members[7].pk}


def test_a_chunk_starting_keeps_the_plan_for_settled_members_and_judges_the_others_now(partner):
    members, planned = planned_an_hour_ago(partner, 4)
    unchanged, planned_regular, narrowed, revoked = members
    record_consent(narrowed, partner, consent_resource(narrowed.fhir_id, partner.npi, policy="regular"),
                   via="member-match")  # narrowed to #regular since the plan
    revoke(Consent.objects.get(member=revoked, partner=partner), "member phoned", actor="member line")

    live = live_members(partner, [m.pk for m in members], [planned_regular.pk], allowed_at=planned)
    assert live.member_ids == [unchanged.pk, planned_regular.pk, narrowed.pk]
    assert live.regular_member_ids == [planned_regular.pk, narrowed.pk]
    assert live.withdrawn == [revoked.pk]
    assert live == live_members(partner, [m.pk for m in members], [planned_regular.pk])  # as judging everyone
