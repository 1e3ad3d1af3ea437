"""The P2P export rules (spec §5.7): the two bounds of the window, and the SQL that applies every rule to rows.

The rule tables run through the SQL the exporter runs: their rows go into pdex_resource through the builders and
are selected with `rules.chunk_query`, at the real "now" their dates are relative to. The pure window arithmetic
uses the fixed REQUEST_TIME and compares only dates derived from it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from dateutil.relativedelta import relativedelta
from django.db import connection
from django.utils import timezone

from exports import rules
from tests.builders import (
    REQUEST_TIME,
    claim_eob,
    condition,
    days_ago,
    days_from_now,
    document,
    encounter,
    make_member,
    observation,
    prior_auth,
    provenance,
    shared,
    store,
    years_ago,
)

# --- pure: the two bounds ---------------------------------------------------------------------------

def test_cap_mode_window_is_on_date_of_service_five_years_back():
    window = rules.export_window(request_time=REQUEST_TIME, mode="cap", lookback_years=5)
    assert window.service_from == datetime(2021, 11, 23, 12, 0, tzinfo=UTC)
    assert window.updated_after is None and window.updated_before is None
    assert window.informational_issues() == []


def test_cap_mode_raises_an_earlier_since_and_reports_it():
    since = REQUEST_TIME - relativedelta(years=11)
    window = rules.export_window(request_time=REQUEST_TIME, since=since, mode="cap", lookback_years=5)
    assert window.updated_after == datetime(2021, 11, 23, 12, 0, tzinfo=UTC)
    assert window.since_was_raised
    [issue] = window.informational_issues()
    assert issue["severity"] == "information" and issue["expression"] == ["_since"]
    assert "5 years" in issue["diagnostics"]


def test_cap_mode_keeps_a_later_since():
    since = REQUEST_TIME - relativedelta(months=10)
    window = rules.export_window(request_time=REQUEST_TIME, since=since, mode="cap", lookback_years=5)
    assert window.updated_after == since and not window.since_was_raised


def test_floor_mode_keeps_since_and_switches_the_window_off():
    since = REQUEST_TIME - relativedelta(years=11)
    until = REQUEST_TIME - relativedelta(months=10)
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


# --- the rule tables, through the exporter's SQL ------------------------------------------------------

def exported(resource_type: str, member_ids: list[int], context: rules.ExportContext) -> list[dict]:
    sql, params = rules.chunk_query(resource_type, member_ids, context)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [json.loads(row[0]) for row in cursor.fetchall()]


def ids(resources: list[dict]) -> set[str]:
    return {r["id"] for r in resources}


def cap_context(**kwargs) -> rules.ExportContext:
    """The rules of an export requested now, in cap mode (a five-year look-back on date of service)."""
    return rules.export_context(request_time=timezone.now(), mode="cap", **kwargs)


@pytest.mark.parametrize(("start_days", "end_days", "kept"), [
    (7 * 366, 7 * 366, False),   # served before the look-back
    (7 * 366, 0, True),          # a period reaching into the window
    (None, None, True),          # undated resources pass
])
def test_window_is_on_the_latest_date_of_service(db, start_days, end_days, kept):
    member = make_member("w1")
    start, end = (None if days is None else days_ago(days).replace(microsecond=0) for days in (start_days, end_days))
    row = store(encounter("enc", "w1", start, end=end), member)
    assert (row.service_start, row.service_end) == (start, end)  # the case is about these columns
    assert (ids(exported("Encounter", [member.pk], cap_context())) == {"enc"}) is kept


@pytest.fixture
def pa_rule(settings):
    """The PA rule of the table: status changes count for 12 months; denied and drug PAs are excluded."""
    settings.EXPORT_PA_STATUS_MONTHS = 12
    settings.EXPORT_EXCLUDE_DENIED_PA = True
    settings.EXPORT_EXCLUDE_DRUG_PA = True


def pa_exported(member, fhir_id: str, status: str, *, changed, period_end, drug: bool) -> bool:
    """Store one PA with these columns and say whether the exporter's SQL selects it."""
    row = store(prior_auth(fhir_id, member.fhir_id, status, changed=changed, period_end=period_end, drug=drug),
                member)
    assert (row.eob_use, row.pa_status, row.pa_drug) == ("preauthorization", status, drug)
    return fhir_id in ids(exported("ExplanationOfBenefit", [member.pk], cap_context()))


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
def test_prior_auth_rule(db, pa_rule, status, changed_days, period_end_days, drug, expected):
    member = make_member("pa1")
    period_end = None if period_end_days is None else days_from_now(period_end_days)
    assert pa_exported(member, "pa", status, changed=days_ago(changed_days), period_end=period_end,
                       drug=drug) is expected


def test_denied_and_drug_exclusions_are_settings(db, pa_rule, settings):
    member = make_member("pa2")
    assert not pa_exported(member, "pa-denied-drug", "denied", changed=days_ago(0), period_end=None, drug=True)
    settings.EXPORT_EXCLUDE_DENIED_PA = False
    settings.EXPORT_EXCLUDE_DRUG_PA = False
    assert "pa-denied-drug" in ids(exported("ExplanationOfBenefit", [member.pk], cap_context()))


def test_context_refuses_types_we_do_not_export():
    with pytest.raises(ValueError):
        rules.export_context(request_time=REQUEST_TIME, types=["Patient", "Basic"])


def test_context_keeps_export_order():
    context = rules.export_context(request_time=REQUEST_TIME, types=["Organization", "Patient"])
    assert context.types == ("Patient", "Organization")


# --- every rule on one member's data, through the exporter's SQL ----------------------------------------

@pytest.fixture
def member_data(db):
    """One member with data on both sides of every rule, and a second member who must never leak."""
    member = make_member("p1")
    other = make_member("p2")
    for resource_type, fhir_id in [("Practitioner", "pr-near"), ("Practitioner", "pr-old"),
                                   ("Organization", "org-near"), ("Organization", "org-other")]:
        store(shared(resource_type, fhir_id))
    store(encounter("enc-near", "p1", years_ago(4), practitioner="pr-near"), member)
    store(encounter("enc-old", "p1", years_ago(6), practitioner="pr-old"), member)
    store(encounter("enc-runoff", "p1", years_ago(4), updated=days_ago(20)), member)
    store(encounter("enc-sensitive", "p1", years_ago(4), security=("PSY",)), member)
    store(encounter("enc-other", "p2", years_ago(4)), other)
    store(condition("cond-old-active", "p1", years_ago(25), "active"), member)
    store(condition("cond-old-resolved", "p1", years_ago(25), "resolved"), member)
    store(condition("cond-near-resolved", "p1", years_ago(4), "resolved"), member)
    store(claim_eob("eob-near", "p1", years_ago(4), organization="org-near"), member)
    store(claim_eob("eob-old", "p1", years_ago(6)), member)
    store(claim_eob("eob-other", "p2", years_ago(4), organization="org-other"), other)
    store(prior_auth("pa-active", "p1", "approved", changed=years_ago(4), period_end=days_from_now(40),
                     documents=("doc-pa-old",)), member)
    store(prior_auth("pa-pending", "p1", "pending", changed=years_ago(7)), member)
    store(prior_auth("pa-recent-cancel", "p1", "cancelled", changed=days_ago(175)), member)
    store(prior_auth("pa-old-expired", "p1", "approved", changed=years_ago(3), period_end=days_ago(900),
                     documents=("doc-pa-excluded",)), member)
    store(prior_auth("pa-denied", "p1", "denied", changed=days_ago(50)), member)
    store(prior_auth("pa-drug", "p1", "approved", changed=days_ago(50), period_end=days_from_now(40), drug=True),
          member)
    store(document("doc-pa-old", "p1", years_ago(11)), member)          # attached to an included PA
    store(document("doc-pa-excluded", "p1", years_ago(4)), member)      # attached only to an excluded PA
    store(document("doc-near", "p1", years_ago(4)), member)
    store(document("doc-old", "p1", years_ago(11)), member)
    store(provenance("prov-near", "p1", ["Encounter/enc-near"]), member)
    store(provenance("prov-old", "p1", ["Encounter/enc-near", "Encounter/enc-old"]), member)
    store(provenance("prov-sensitive", "p1", ["Encounter/enc-sensitive"]), member)
    store(observation("obs-near", "p1", years_ago(4)), member)
    return member, other


def test_window_on_date_of_service(member_data):
    member, _ = member_data
    assert ids(exported("Encounter", [member.pk], cap_context())) == {"enc-near", "enc-runoff", "enc-sensitive"}


def test_never_another_members_data(member_data):
    member, other = member_data
    assert "enc-other" not in ids(exported("Encounter", [member.pk], cap_context()))
    assert ids(exported("Encounter", [other.pk], cap_context())) == {"enc-other"}


def test_since_is_on_last_updated_and_run_off_claims_pass(member_data):
    member, _ = member_data
    context = cap_context(since=days_ago(50))  # the member's data was last updated half a year ago
    assert ids(exported("Encounter", [member.pk], context)) == {"enc-runoff"}


def test_until_bounds_last_updated(member_data):
    member, _ = member_data
    context = cap_context(until=days_ago(50))
    assert "enc-runoff" not in ids(exported("Encounter", [member.pk], context))


def test_floor_mode_returns_older_data(member_data):
    member, _ = member_data
    context = rules.export_context(request_time=timezone.now(), mode="floor")
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
