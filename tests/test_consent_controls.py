"""What the data holder's staff control: member-level blocks, consents recorded by hand, authorized
representatives, the data-sharing agreement, and that nothing is silently deleted in admin."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory

from consent import services
from consent.decision import ROLE_CODE_SYSTEM, DecisionKind, Reason
from consent.models import Consent, ConsentEvent, MemberBlock
from exports import jobs, withdrawal
from exports.models import ExportChunk, ExportJob
from matching import jobs as match_jobs
from matching.models import GroupMember, MatchEntry, MatchJob, MemberMatchGroup
from pdex.jobs.models import OutputFile
from pdex.models import AuditEvent
from tests.builders import (
    bulk_match_request,
    claim_eob,
    consent_for,
    consent_resource,
    days_ago,
    days_from_now,
    example_members,
    make_member,
    match_group,
    observation,
    store,
)
from tests.export_world import exported_lines

EXPORT_KICKOFF = "Group/{}/$davinci-data-export"


def run_export(job_id) -> ExportJob:
    """What the workers do, in this process: plan, every chunk, finalize."""
    for chunk_id in jobs.plan(job_id):
        jobs.run_chunk(chunk_id)
    jobs.finalize(job_id)
    return ExportJob.objects.get(pk=job_id)


def kick_off_export(api, group) -> object:
    return api.post(f"/fhir/{EXPORT_KICKOFF.format(group.pk)}", data=json.dumps({"resourceType": "Parameters"}),
                    content_type="application/fhir+json", HTTP_PREFER="respond-async")


@pytest.fixture
def file_storage(settings, tmp_path, transactional_db):
    """File storage, and committed rows: the export streams them on a connection of its own."""
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.EXPORT_CHUNK_MEMBERS = 1


def member_with_data(fhir_id: str):
    member = make_member(fhir_id, umb=f"UMB-{fhir_id}")
    store(observation(f"{fhir_id}-obs", fhir_id, days_ago(30)), member)
    store(claim_eob(f"{fhir_id}-eob", fhir_id, days_ago(40)), member)
    return member


# --- member-level block --------------------------------------------------------------------------

def block_in_admin(admin_client, member, partner=None, reason="member asked us not to share") -> MemberBlock:
    response = admin_client.post("/admin/consent/memberblock/add/", {
        "member_ref": member.umb, "partner": partner.pk if partner else "", "reason": reason})
    assert response.status_code == 302, response.content.decode()[:2000]
    return MemberBlock.objects.get(member=member, lifted_at__isnull=True)


def test_block_wins_at_bulk_member_match(admin_client, api, partner, settings):
    settings.PAYER_NPI = "9876543210"
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    settings.MATCH_BATCH_SIZE = 10
    members = example_members()
    block = block_in_admin(admin_client, members["pat-1001"])
    assert AuditEvent.objects.filter(action="member-block", entity=f"MemberBlock/{block.pk}").exists()
    response = api.post("/fhir/Group/$bulk-member-match", data=json.dumps(bulk_match_request()),
                        content_type="application/fhir+json", HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    job = MatchJob.objects.get(partner=partner)
    for batch_id in match_jobs.plan(str(job.pk)):
        match_jobs.run_batch(batch_id)
    assert match_jobs.finish(str(job.pk))
    entry = MatchEntry.objects.get(job=job, member=members["pat-1001"])
    assert entry.outcome == MatchEntry.Outcome.CONSENT_CONSTRAINED and "member blocked sharing" in entry.reason
    assert not GroupMember.objects.filter(member=members["pat-1001"], group__code=MemberMatchGroup.Code.MATCH).exists()
    assert GroupMember.objects.filter(member=members["pat-2002"], group__code=MemberMatchGroup.Code.MATCH).exists()

    # Lifted (asked to confirm, with a reason): the next match is judged on the consent again, and it is audited.
    admin_client.post("/admin/consent/memberblock/", {"action": "lift_selected", "confirmed": "yes",
                                                      "reason": "member changed their mind",
                                                      "_selected_action": [block.pk]})
    block.refresh_from_db()
    assert not block.active and block.lifted_by == "admin" and block.lifted_reason == "member changed their mind"
    assert AuditEvent.objects.filter(action="member-unblock", entity=f"MemberBlock/{block.pk}").exists()


def test_block_wins_in_a_running_export_and_at_everything(admin_client, api, partner, file_storage):
    blocked, other = member_with_data("pt-blocked"), member_with_data("pt-other")
    for member in (blocked, other):
        consent_for(member, partner)
    group = match_group(partner, [blocked, other])
    assert api.get(f"/fhir/Patient/{blocked.fhir_id}/$everything").status_code == 200
    response = kick_off_export(api, group)
    assert response.status_code == 202, response.content
    job_id = response["Content-Location"].rsplit("/", 1)[1]
    chunk_ids = jobs.plan(job_id)  # planned while the member could still be exported
    assert ExportChunk.objects.filter(job_id=job_id, member_ids=[blocked.pk]).exists()

    block_in_admin(admin_client, blocked, partner)  # blocked for this partner only
    for chunk_id in chunk_ids:
        jobs.run_chunk(chunk_id)
    assert jobs.finalize(job_id)
    job = ExportJob.objects.get(pk=job_id)
    lines = exported_lines(job)
    assert lines and not any(blocked.fhir_id in line.decode() for line in lines)
    assert any(other.fhir_id in line.decode() for line in lines)
    theirs = ExportChunk.objects.filter(job_id=job_id, member_ids=[blocked.pk])
    assert theirs and all(chunk.withdrawn_member_ids == [blocked.pk] and chunk.count == 0 for chunk in theirs)
    refused = api.get(f"/fhir/Patient/{blocked.fhir_id}/$everything")
    assert refused.status_code == 404 and blocked.umb not in refused.content.decode()
    assert api.get(f"/fhir/Observation?patient=Patient/{blocked.fhir_id}").json().get("total", 0) == 0
    assert services.decision_for(blocked, partner).reason is Reason.BLOCKED
    assert "member blocked sharing" in admin_client.get("/admin/consent/consent/").content.decode()


def test_the_sweep_withdraws_exports_whose_members_consent_expired(api, partner, file_storage):
    """A consent that runs out sends no event: the maintenance sweep finds the completed exports holding the
    member and withdraws them, so no presigned URL outlives it by more than the sweep's period."""
    lapsing, staying = member_with_data("pt-lapsing"), member_with_data("pt-staying")
    for member in (lapsing, staying):
        consent_for(member, partner)
    job = run_export(kick_off_export(api, match_group(partner, [lapsing, staying]))["Content-Location"]
                     .rsplit("/", 1)[1])
    assert job.status == ExportJob.Status.COMPLETED and OutputFile.objects.filter(job_id=job.pk).exists()
    assert withdrawal.withdraw_ended() == []  # nothing ended yet
    Consent.objects.filter(member=lapsing).update(period_end=days_ago(1).date())
    assert withdrawal.withdraw_ended() == [job.pk]
    job.refresh_from_db()
    assert job.status == ExportJob.Status.QUEUED and job.withdrawn_members == 1
    assert not OutputFile.objects.filter(job_id=job.pk).exists()
    job = run_export(job.pk)
    lines = exported_lines(job)
    assert not any(lapsing.fhir_id in line.decode() for line in lines)
    assert any(staying.fhir_id in line.decode() for line in lines)


# --- consents recorded by staff --------------------------------------------------------------------

def staff_form(member, partner, **overrides) -> dict:
    form = {"member_ref": member.fhir_id, "partner_ref": partner.pk, "policy_choice": "sensitive",
            "start": days_ago(1).date().isoformat(), "end": days_from_now(90).date().isoformat(),
            "representative_name": "", "representative_relationship": "", "representative_role": "",
            "document_reference": "", "document_file": SimpleUploadedFile("signed.pdf", b"%PDF-1.4 form",
                                                                           content_type="application/pdf")}
    form.update(overrides)
    return form


def test_staff_record_a_consent_with_its_document_and_representative(admin_client, partner, settings):
    member = make_member("pt-paper", umb="UMB-paper")
    response = admin_client.post("/admin/consent/consent/add/", staff_form(
        member, partner, representative_name="Jennifer Person", representative_relationship="DAU",
        representative_role="HPOWATT"))
    assert response.status_code == 302, response.content.decode()[:3000]
    consent = Consent.objects.get(member=member, partner=partner)
    assert (consent.submitted_via, consent.recorded_by, consent.representative, consent.representative_role) == (
        "staff", "admin", "Jennifer Person", "HPOWATT")
    assert consent.document.filename == "signed.pdf" and bytes(consent.document.data) == b"%PDF-1.4 form"
    assert consent.resource["performer"] == [{"reference": "#representative"}]
    assert consent.resource["sourceAttachment"]["title"] == "signed.pdf"
    assert services.decision_for(member, partner).kind is DecisionKind.COMPLY_ALL
    assert list(consent.events.values_list("action", flat=True)) == ["recorded", "decided"]
    assert AuditEvent.objects.filter(action="consent-record", entity=f"Consent/{consent.pk}").exists()
    page = admin_client.get(f"/admin/consent/consent/{consent.pk}/change/").content.decode()
    assert "recorded by staff" in page and "HPOWATT" in page


def test_staff_consent_is_judged_like_one_from_a_match(admin_client, partner):
    member = make_member("pt-late", umb="UMB-late")
    expired = staff_form(member, partner, start=days_ago(100).date().isoformat(),
                         end=days_ago(10).date().isoformat())
    response = admin_client.post("/admin/consent/consent/add/", expired, follow=True)
    assert "period not valid now" in response.content.decode()
    no_document = staff_form(member, partner, document_file="")
    response = admin_client.post("/admin/consent/consent/add/", no_document)
    assert response.status_code == 200 and "Attach the document" in response.content.decode()
    assert not Consent.objects.filter(member=member).exists()


# --- authorized representatives ----------------------------------------------------------------------

def signed_by_representative(member, partner, role: str) -> dict:
    resource = consent_resource(member.fhir_id, partner.npi)
    resource["contained"] = [{"resourceType": "RelatedPerson", "id": "rp1", "patient": {"reference":
                              f"Patient/{member.fhir_id}"}, "name": [{"family": "Person", "given": ["Jennifer"]}]}]
    resource["performer"] = [{"reference": "#rp1"}]
    resource["provision"]["actor"].append({"role": {"coding": [{"system": ROLE_CODE_SYSTEM, "code": role}]},
                                           "reference": {"reference": "#rp1"}})
    return resource


def test_representative_without_an_allowed_role_lets_nothing_go(api, partner, file_storage):
    neighbour, attorney = member_with_data("pt-neighbour"), member_with_data("pt-attorney")
    # A neighbour (role "NBOR") signed for one member, a healthcare power of attorney for the other.
    services.record_consent(neighbour, partner, signed_by_representative(neighbour, partner, "NBOR"),
                            "bulk-member-match")
    services.record_consent(attorney, partner, signed_by_representative(attorney, partner, "HPOWATT"),
                            "bulk-member-match")
    consent = Consent.objects.get(member=neighbour)
    assert (consent.representative, consent.representative_role) == ("Jennifer Person", "NBOR")
    decided = consent.events.get(action=ConsentEvent.Action.DECIDED)
    assert "representative without an allowed role" in decided.detail  # the reason is recorded
    assert services.decision_for(neighbour, partner).reason is Reason.REPRESENTATIVE_ROLE
    assert services.decision_for(attorney, partner).allowed

    assert api.get(f"/fhir/Patient/{neighbour.fhir_id}/$everything").status_code == 404
    group = match_group(partner, [neighbour, attorney])
    job = run_export(kick_off_export(api, group)["Content-Location"].rsplit("/", 1)[1])
    lines = exported_lines(job)
    assert any(attorney.fhir_id in line.decode() for line in lines)
    assert not any(neighbour.fhir_id in line.decode() for line in lines)


# --- the agreement -----------------------------------------------------------------------------------

def test_export_kick_off_needs_an_agreement_in_force(make_partner, api_for, settings):
    member = member_with_data("pt-agree")
    without = make_partner(agreement_date=None)
    ended = make_partner(agreement_date=days_ago(400).date(), agreement_end=days_ago(1).date())
    signed = make_partner()
    for partner in (without, ended, signed):
        consent_for(member, partner)
    for partner in (without, ended):
        api = api_for(partner)
        response = kick_off_export(api, match_group(partner, [member]))
        assert response.status_code == 403
        assert "agreement is required" in response.json()["issue"][0]["diagnostics"]
        assert api.get("/fhir/Group").status_code == 200  # it still has a token, and its Groups
    assert not ExportJob.objects.exists()
    assert AuditEvent.objects.filter(reason__contains="no data-sharing agreement in force").count() == 2
    assert kick_off_export(api_for(signed), match_group(signed, [member])).status_code == 202

    # Matching needs none, unless the payer says so.
    api = api_for(without)
    body = {"resourceType": "Parameters", "parameter": []}
    assert api.post("/fhir/Patient/$member-match", data=json.dumps(body),
                    content_type="application/fhir+json").status_code != 403
    settings.AGREEMENT_REQUIRED_FOR_MATCH = True
    refused = api.post("/fhir/Patient/$member-match", data=json.dumps(body), content_type="application/fhir+json")
    assert refused.status_code == 403 and "agreement is required" in refused.json()["issue"][0]["diagnostics"]


# --- no silent deletes ------------------------------------------------------------------------------

KEPT_MODELS = (Consent, ConsentEvent, MemberBlock, MemberMatchGroup, GroupMember, MatchJob, MatchEntry, ExportJob)


@pytest.mark.parametrize("model", KEPT_MODELS, ids=lambda m: m.__name__)
def test_admin_cannot_delete_consents_groups_or_jobs(model, db):
    model_admin = admin.site._registry.get(model)
    if model is ConsentEvent:
        assert model_admin is None  # shown only as the history on a consent's page
        return
    request = RequestFactory().get("/admin/")
    request.user = User.objects.create_superuser("root", "root@example.org", "x")
    assert not model_admin.has_delete_permission(request)
    assert not model_admin.has_delete_permission(request, model())
    assert "delete_selected" not in model_admin.get_actions(request)


def test_revoke_and_cancel_ask_first_and_record_who_and_why(admin_client, partner, file_storage, api):
    member = member_with_data("pt-cancel")
    consent_for(member, partner)
    job_id = kick_off_export(api, match_group(partner, [member]))["Content-Location"].rsplit("/", 1)[1]
    asked = admin_client.post("/admin/exports/exportjob/", {"action": "cancel_jobs", "_selected_action": [job_id]})
    assert asked.status_code == 200 and b"reason" in asked.content
    assert ExportJob.objects.get(pk=job_id).status == ExportJob.Status.QUEUED
    admin_client.post("/admin/exports/exportjob/", {"action": "cancel_jobs", "confirmed": "yes",
                                                    "reason": "partner asked by phone", "_selected_action": [job_id]})
    assert ExportJob.objects.get(pk=job_id).status == ExportJob.Status.CANCELLED
    event = AuditEvent.objects.get(action="bulk-cancel")
    assert event.reason == "cancelled by admin admin: partner asked by phone"
    for url in ("/admin/consent/consent/", f"/admin/exports/exportjob/{job_id}/change/",
                "/admin/consent/memberblock/", "/admin/consent/memberblock/add/", "/admin/consent/consent/add/"):
        page = admin_client.get(url)
        assert page.status_code == 200 and b"deletelink" not in page.content and b"delete_selected" not in page.content
