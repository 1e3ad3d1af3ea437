"""What the requesting side sends and reads: MemberBundles a data holder matches (our own matcher plays the
old payer), the three Groups read back, the export kick-off, Retry-After, and registration with a payer by
RFC 7591 with our JWKS URL (our own server plays the payer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from matching.models import MatchEntry
from matching.parameters import parse_bulk
from matching.services import evaluate_entries
from pdex.models import Partner
from requesting import consents, registry
from requesting.client import retry_after_seconds
from requesting.consent_resource import ConsentTerms, OldCard, PayerRef, consent_resource
from requesting.models import PreviousPayer, PullJob
from requesting.pull import bundles
from requesting.pull.start import start_pulls
from requesting.pull.steps import MATCH_PARAMETERS, export_request, outcomes_from_groups
from tests.builders import make_member, patient


def facts_for(patient_id: str, *, policy: str, card: str, our_npi: str, **patient_fields) -> bundles.MatchFacts:
    today = timezone.localdate()
    consent = consent_resource(
        consent_id="1", patient_id=patient_id, terms=ConsentTerms(policy, today, today + timedelta(days=90)),
        source=PayerRef(settings.PAYER_NPI, settings.PAYER_NAME), recipient=PayerRef(our_npi, "New Plan"),
        collected_on=today, record_system="https://new.example/consents")
    return bundles.MatchFacts(patient=patient(patient_id, **patient_fields), member_number=f"NP-{patient_id}",
                              coverage_start=today, old_member_id=card, old_subscriber_id="", old_relationship="self",
                              old_coverage_end=None, consent=consent)


@pytest.mark.django_db
def test_the_member_bundles_we_send_are_matched_by_a_data_holder(make_partner):
    """Our own matcher is the old payer here: same person, our ids, their old card."""
    partner: Partner = make_partner("New Plan", npi="1999999999")
    make_member("a-1", family="Wintheiser", given=["Aleta"], birth_date="1950-03-04", member_number="M0001")
    make_member("a-2", family="Kuhn", given=["Otto"], birth_date="1961-07-08", member_number="M0002")
    payers = bundles.Payers(their_npi=settings.PAYER_NPI, their_name=settings.PAYER_NAME, their_member_id_system="",
                            our_npi=partner.npi, our_name="New Plan",
                            our_member_id_system="https://new.example/memberid")
    members = [
        facts_for("np-1", policy="sensitive", card="M0001", our_npi=partner.npi, family="Wintheiser",
                  given=["Aleta"], birth_date="1950-03-04"),
        facts_for("np-2", policy="regular", card="M0002", our_npi=partner.npi, family="Kuhn", given=["Otto"],
                  birth_date="1961-07-08"),
        facts_for("np-3", policy="sensitive", card="M9999", our_npi=partner.npi, family="Nobody", given=["Never"],
                  birth_date="1980-01-01"),
    ]
    request = bundles.bulk_request(members, payers)
    entries = parse_bulk(request)
    outcomes = [e.outcome for e in evaluate_entries(partner, entries, now=timezone.now())]
    assert outcomes == [MatchEntry.Outcome.MATCHED, MatchEntry.Outcome.MATCHED, MatchEntry.Outcome.NO_MATCH]
    sent = request["parameter"][0]["part"]
    assert [p["name"] for p in sent] == ["MemberPatient", "CoverageToMatch", "CoverageToLink", "Consent"]
    assert sent[0]["resource"]["identifier"][0]["system"] == "https://new.example/memberid"
    assert "telecom" not in sent[0]["resource"]
    [single] = evaluate_entries(partner, [{"name": "MemberBundle",
                                           "part": bundles.single_request(members[0], payers)["parameter"]}],
                                now=timezone.now())
    assert single.outcome == MatchEntry.Outcome.MATCHED


def test_their_groups_tell_who_matched_by_the_patients_we_submitted():
    def group(code: str, members: list[tuple[str, str]]) -> dict:
        return {"resourceType": "Group", "id": f"g-{code}", "type": "person", "actual": True,
                "code": {"coding": [{"system": "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/"
                                              "PdexMultiMemberMatchResultCS", "code": code}]},
                "contained": [{"resourceType": "Patient", "id": ours} for ours, _ in members],
                "member": [{"entity": {"reference": entity, "extension": [
                    {"url": MATCH_PARAMETERS, "valueReference": {"reference": f"#{ours}"}}]}}
                    for ours, entity in members]}

    outcomes, group_id = outcomes_from_groups([
        group("match", [("np-1", "Patient/a-1"), ("np-2", "Patient/a-2")]),
        group("nomatch", [("np-3", "#np-3"), ("np-1", "#np-1")]),
        group("consentconstraint", [("np-4", "#np-4")]),
    ])
    assert group_id == "g-match"
    assert {(o.member_fhir_id, o.outcome, o.their_patient_id) for o in outcomes} == {
        ("np-1", "match", "a-1"), ("np-2", "match", "a-2"), ("np-3", "nomatch", ""),
        ("np-4", "consentconstraint", "")}


def test_the_export_asks_for_payer_to_payer_data_since_the_last_pull_and_narrows_to_the_still_consented():
    since = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    job = PullJob(since=since, matched_group_id="g-match")
    path, body = export_request(job, ["a-2"], narrowed=True)
    assert path == "Group/g-match/$davinci-data-export"
    assert body["parameter"] == [
        {"name": "exportType", "valueCanonical": "hl7.fhir.us.davinci-pdex#payertopayer"},
        {"name": "_since", "valueInstant": "2026-11-01T12:00:00Z"},
        {"name": "patient", "valueReference": {"reference": "Patient/a-2"}}]
    single = PullJob(single=True)
    patient_parameter = {"name": "patient", "valueReference": {"reference": "Patient/a-1"}}
    assert export_request(single, ["a-1"], narrowed=False) == (
        "Patient/$export", {"resourceType": "Parameters", "parameter": [patient_parameter]})


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded(settings):
    settings.P2P_MAX_RETRY_AFTER_SECONDS = 300
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7", default=5) == 7
    assert retry_after_seconds("Mon, 23 Nov 2026 12:00:30 GMT", default=5, now=now) == 30
    assert retry_after_seconds("soon", default=5) == 5
    assert retry_after_seconds(None, default=5) == 5
    assert retry_after_seconds("86400", default=5) == 300 and retry_after_seconds("0", default=5) == 1


@pytest.mark.django_db(transaction=True)
def test_we_register_dynamically_with_our_jwks_url_and_get_tokens_once_approved(live_server, settings):
    """Our own server plays the previous payer: its discovery, its RFC 7591 endpoint, its token endpoint (which
    fetches our keys from our JWKS URL)."""
    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.JWKS_ALLOW_HTTP = True
    settings.PAYER_NPI = "1999999999"
    payer = registry.add_previous_payer(name="Itself", npi="1234567890", fhir_base_url=settings.FHIR_BASE_URL)
    assert payer.token_endpoint == f"{live_server.url}/oauth/token" and "bulk-member-match" in payer.operations
    registry.register_dynamically(payer)
    partner = Partner.objects.get(application__client_id=payer.client_id)
    assert (partner.jwks_url, partner.npi, partner.status) == (f"{live_server.url}/client/jwks.json", "1999999999",
                                                               Partner.Status.PENDING)
    assert "invalid_client" in registry.check_connection(payer)
    Partner.objects.filter(pk=partner.pk).update(status=Partner.Status.ACTIVE)
    assert registry.check_connection(payer) == "ok"
    assert PreviousPayer.objects.get(pk=payer.pk).last_token_at is not None
    manual = registry.set_client_id(PreviousPayer.objects.create(name="Other", npi="1333333333",
                                                                  fhir_base_url="https://other.example/fhir"), "xyz")
    assert (manual.registration, manual.client_id) == (PreviousPayer.Registration.MANUAL, "xyz")


@pytest.mark.django_db
def test_one_member_goes_by_member_match_when_the_payer_offers_it_and_a_pull_never_asks_twice(settings):
    settings.PAYER_NPI = "1999999999"
    payer = PreviousPayer.objects.create(name="Old", npi="1234567893", fhir_base_url="https://old.example/fhir",
                                         client_id="c", token_endpoint="https://old.example/oauth/token",
                                         operations=["bulk-member-match", "davinci-data-export", "export",
                                                     "member-match"])
    today = timezone.localdate()
    recorded = [consents.record_consent(
        member=make_member(f"np-{n}"), payer=payer, terms=ConsentTerms("sensitive", today, today + timedelta(90)),
        scenario="enrollment", coverage_start=today, old_card=OldCard(member_id=f"M{n}"), via="admin", actor="t")
        for n in range(3)]
    [both] = start_pulls(payer, consents=recorded[:2])
    assert not both.single and both.members == 2
    [one] = start_pulls(payer)  # the members in the pull under way are not asked about twice
    assert one.single and list(one.pull_members.values_list("member__fhir_id", flat=True)) == ["np-2"]
    assert start_pulls(payer) == []
