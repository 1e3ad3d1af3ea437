"""The P2P export rules (spec §5.7): pure window and PA functions, and the SQL that applies them to rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from exports import rules
from tests.builders import (
    REQUEST_TIME,
    claim_eob,
    condition,
    document,
    encounter,
    make_member,
    observation,
    prior_auth,
    provenance,
    shared,
    store,
)

YEARS_AGO_4 = "2022-12-01T10:00:00Z"
YEARS_AGO_6 = "2020-11-01T10:00:00Z"


# --- pure: the two bounds ---------------------------------------------------------------------------

def test_cap_mode_window_is_on_date_of_service_five_years_back():
    window = rules.export_window(request_time=REQUEST_TIME, mode="cap", lookback_years=5)
    assert window.service_from == datetime(2021, 11, 23, 12, 0, tzinfo=UTC)
    assert window.updated_after is None and window.updated_before is None
    assert window.informational_issues() == []


def test_cap_mode_raises_an_earlier_since_and_reports_it():
    since = datetime(2015, 1, 1, tzinfo=UTC)
    window = rules.export_window(request_time=REQUEST_TIME, since=since, mode="cap", lookback_years=5)
    assert window.updated_after == datetime(2021, 11, 23, 12, 0, tzinfo=UTC)
    assert window.since_was_raised
    [issue] = window.informational_issues()
    assert issue["severity"] == "information" and issue["expression"] == ["_since"]
    assert "5 years" in issue["diagnostics"]


def test_cap_mode_keeps_a_later_since():
    since = datetime(2026, 1, 1, tzinfo=UTC)
    window = rules.export_window(request_time=REQUEST_TIME, since=since, mode="cap", lookback_years=5)
    assert window.updated_after == since and not window.since_was_raised


def test_floor_mode_keeps_since_and_switches_the_window_off():
    since = datetime(2015, 1, 1, tzinfo=UTC)
    until = datetime(2026, 1, 1, tzinfo=UTC)
    window = rules.export_window(request_time=REQUEST_TIME, since=since, until=until, mode="floor")
    assert window.service_from is None
    assert window.updated_after == since and window.updated_before == until
    assert not window.since_was_raised


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        rules.export_window(request_time=REQUEST_TIME, mode="sometimes")


def test_lookback_comes_from_settings(settings):
    settings.EXPORT_LOOKBACK_YEARS = 2
    settings.EXPORT_WINDOW_MODE = "cap"
    assert rules.export_window(request_time=REQUEST_TIME).service_from == datetime(2024, 11, 23, 12, tzinfo=UTC)


def test_in_window_pure_rule():
    window = rules.export_window(request_time=REQUEST_TIME, mode="cap", lookback_years=5)
    old = datetime(2019, 1, 1, tzinfo=UTC)
    assert not rules.in_window(window, service_start=old, service_end=old)
    assert rules.in_window(window, service_start=old, service_end=REQUEST_TIME)  # a period reaching in
    assert rules.in_window(window, service_start=None, service_end=None)


@pytest.mark.parametrize(("status", "changed_days", "period_end_days", "drug", "expected"), [
    ("pending", 900, None, False, True),             # pending: always
    ("approved", 900, 30, False, True),              # active: still in force
    ("approved", 900, -30, False, False),            # expired long ago, changed long ago
    ("approved", 100, -30, False, True),             # expired, but status changed within 12 months
    ("cancelled", 100, None, False, True),
    ("cancelled", 400, None, False, False),
    ("denied", 10, None, False, False),              # denied: excluded by default
    ("approved", 10, 30, True, False),               # prescription-drug PA: excluded by default
])
def test_prior_auth_rule(status, changed_days, period_end_days, drug, expected):
    rule = rules.prior_auth_rule(request_time=REQUEST_TIME, months=12, exclude_denied=True, exclude_drug=True)
    period_end = None if period_end_days is None else REQUEST_TIME + timedelta(days=period_end_days)
    assert rules.prior_auth_included(rule, status=status, status_changed=REQUEST_TIME - timedelta(days=changed_days),
                                     period_end=period_end, drug=drug) is expected


def test_denied_and_drug_exclusions_are_settings():
    rule = rules.prior_auth_rule(request_time=REQUEST_TIME, exclude_denied=False, exclude_drug=False)
    assert rules.prior_auth_included(rule, status="denied", status_changed=REQUEST_TIME, period_end=None, drug=True)


def test_context_refuses_types_we_do_not_export():
    with pytest.raises(ValueError):
        rules.export_context(request_time=REQUEST_TIME, types=["Patient", "Basic"])


def test_context_keeps_export_order():
    context = rules.export_context(request_time=REQUEST_TIME, types=["Organization", "Patient"])
    assert context.types == ("Patient", "Organization")


# --- SQL against real rows ----------------------------------------------------------------------------

def exported(resource_type: str, member_ids: list[int], context: rules.ExportContext) -> list[dict]:
    sql, params = rules.chunk_query(resource_type, member_ids, context)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [json.loads(row[0]) for row in cursor.fetchall()]


def ids(resources: list[dict]) -> set[str]:
    return {r["id"] for r in resources}


@pytest.fixture
def member_data(db):
    """One member with data on both sides of every rule, and a second member who must never leak."""
    member = make_member("p1")
    other = make_member("p2")
    for resource_type, fhir_id in [("Practitioner", "pr-near"), ("Practitioner", "pr-old"),
                                   ("Organization", "org-near"), ("Organization", "org-other")]:
        store(shared(resource_type, fhir_id))
    store(encounter("enc-near", "p1", YEARS_AGO_4, practitioner="pr-near"), member)
    store(encounter("enc-old", "p1", YEARS_AGO_6, practitioner="pr-old"), member)
    store(encounter("enc-runoff", "p1", YEARS_AGO_4, updated="2026-11-01T00:00:00Z"), member)
    store(encounter("enc-sensitive", "p1", YEARS_AGO_4, security=("PSY",)), member)
    store(encounter("enc-other", "p2", YEARS_AGO_4), other)
    store(condition("cond-old-active", "p1", "2001-01-01", "active"), member)
    store(condition("cond-old-resolved", "p1", "2001-01-01", "resolved"), member)
    store(condition("cond-near-resolved", "p1", YEARS_AGO_4, "resolved"), member)
    store(claim_eob("eob-near", "p1", YEARS_AGO_4, organization="org-near"), member)
    store(claim_eob("eob-old", "p1", YEARS_AGO_6), member)
    store(claim_eob("eob-other", "p2", YEARS_AGO_4, organization="org-other"), other)
    store(prior_auth("pa-active", "p1", "approved", changed="2023-01-01T00:00:00Z", period_end="2027-01-01",
                     documents=("doc-pa-old",)), member)
    store(prior_auth("pa-pending", "p1", "pending", changed="2020-01-01T00:00:00Z"), member)
    store(prior_auth("pa-recent-cancel", "p1", "cancelled", changed="2026-06-01T00:00:00Z"), member)
    store(prior_auth("pa-old-expired", "p1", "approved", changed="2024-01-01T00:00:00Z", period_end="2024-06-01",
                     documents=("doc-pa-excluded",)), member)
    store(prior_auth("pa-denied", "p1", "denied", changed="2026-10-01T00:00:00Z"), member)
    store(prior_auth("pa-drug", "p1", "approved", changed="2026-10-01T00:00:00Z", period_end="2027-01-01",
                     drug=True), member)
    store(document("doc-pa-old", "p1", "2015-01-01"), member)          # attached to an included PA
    store(document("doc-pa-excluded", "p1", YEARS_AGO_4), member)      # attached only to an excluded PA
    store(document("doc-near", "p1", YEARS_AGO_4), member)
    store(document("doc-old", "p1", "2015-01-01"), member)
    store(provenance("prov-near", "p1", ["Encounter/enc-near"]), member)
    store(provenance("prov-old", "p1", ["Encounter/enc-near", "Encounter/enc-old"]), member)
    store(provenance("prov-sensitive", "p1", ["Encounter/enc-sensitive"]), member)
    store(observation("obs-near", "p1", YEARS_AGO_4), member)
    return member, other


def cap_context(**kwargs) -> rules.ExportContext:
    return rules.export_context(request_time=REQUEST_TIME, mode="cap", **kwargs)


def test_window_on_date_of_service(member_data):
    member, _ = member_data
    assert ids(exported("Encounter", [member.pk], cap_context())) == {"enc-near", "enc-runoff", "enc-sensitive"}


def test_never_another_members_data(member_data):
    member, other = member_data
    assert "enc-other" not in ids(exported("Encounter", [member.pk], cap_context()))
    assert ids(exported("Encounter", [other.pk], cap_context())) == {"enc-other"}


def test_since_is_on_last_updated_and_run_off_claims_pass(member_data):
    member, _ = member_data
    context = cap_context(since=datetime(2026, 10, 1, tzinfo=UTC))
    assert ids(exported("Encounter", [member.pk], context)) == {"enc-runoff"}


def test_until_bounds_last_updated(member_data):
    member, _ = member_data
    context = cap_context(until=datetime(2026, 10, 1, tzinfo=UTC))
    assert "enc-runoff" not in ids(exported("Encounter", [member.pk], context))


def test_floor_mode_returns_older_data(member_data):
    member, _ = member_data
    context = rules.export_context(request_time=REQUEST_TIME, mode="floor")
    assert "enc-old" in ids(exported("Encounter", [member.pk], context))


def test_still_active_conditions_are_always_included(member_data):
    member, _ = member_data
    assert ids(exported("Condition", [member.pk], cap_context())) == {"cond-old-active", "cond-near-resolved"}


def test_regular_consent_withholds_sensitive_resources_per_member(member_data):
    member, other = member_data
    context = cap_context(regular_member_ids={member.pk})
    assert "enc-sensitive" not in ids(exported("Encounter", [member.pk, other.pk], context))
    assert "enc-other" in ids(exported("Encounter", [member.pk, other.pk], context))
    assert "enc-sensitive" in ids(exported("Encounter", [member.pk], cap_context(regular_member_ids={other.pk})))


def test_prior_authorizations_follow_the_pa_rule_only(member_data):
    member, _ = member_data
    eobs = ids(exported("ExplanationOfBenefit", [member.pk], cap_context()))
    assert eobs == {"eob-near", "pa-active", "pa-pending", "pa-recent-cancel"}


def test_pa_documents_follow_their_pa_not_the_window(member_data):
    member, _ = member_data
    assert ids(exported("DocumentReference", [member.pk], cap_context())) == {"doc-pa-old", "doc-near"}


def test_claim_eobs_are_non_financial_and_pas_keep_amounts(member_data):
    member, _ = member_data
    by_id = {r["id"]: r for r in exported("ExplanationOfBenefit", [member.pk], cap_context())}
    claim = by_id["eob-near"]
    assert not {"payment", "total", "benefitBalance"} & set(claim)
    assert not {"net", "unitPrice", "adjudication"} & set(claim["item"][0])
    assert claim["item"][0]["productOrService"]["coding"][0]["code"] == "185349003"
    assert by_id["pa-active"]["total"][0]["amount"]["value"] == 300.0


def test_provenance_follows_its_targets(member_data):
    member, _ = member_data
    assert ids(exported("Provenance", [member.pk], cap_context())) == {"prov-near", "prov-sensitive"}
    regular = cap_context(regular_member_ids={member.pk})
    assert ids(exported("Provenance", [member.pk], regular)) == {"prov-near"}


def test_shared_resources_only_when_referenced_by_exported_rows(member_data):
    member, other = member_data
    assert ids(exported("Practitioner", [member.pk], cap_context())) == {"pr-near"}
    assert ids(exported("Organization", [member.pk], cap_context())) == {"org-near"}
    assert ids(exported("Organization", [member.pk, other.pk], cap_context())) == {"org-near", "org-other"}


def test_shared_resources_follow_type_selection(member_data):
    member, _ = member_data
    context = cap_context(types=["Patient", "Practitioner"])
    assert exported("Practitioner", [member.pk], context) == []
    assert exported("Encounter", [member.pk], context) == []


def test_patient_has_no_window(member_data):
    member, _ = member_data
    assert ids(exported("Patient", [member.pk], cap_context())) == {"p1"}


def test_type_filter_alternatives_are_ored(member_data):
    member, _ = member_data
    filters = {"Encounter": [rules.Fragment("{r}.fhir_id = %(tf_a)s", {"tf_a": "enc-near"}),
                             rules.Fragment("{r}.fhir_id = %(tf_b)s", {"tf_b": "enc-old"})]}
    assert ids(exported("Encounter", [member.pk], cap_context(type_filters=filters))) == {"enc-near"}


def test_chunk_query_is_stable(member_data):
    member, _ = member_data
    first = exported("Observation", [member.pk], cap_context())
    assert first == exported("Observation", [member.pk], cap_context())


def test_empty_type_selection_selects_nothing():
    assert rules.export_context(request_time=REQUEST_TIME, types=[]).types == ()
    assert rules.export_context(request_time=REQUEST_TIME, types=None).types == rules.EXPORT_TYPES
