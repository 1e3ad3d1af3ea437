"""The admin as operations and compliance staff use it: dashboard, received data with CSV, audit CSV, jobs."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import Grant, IDToken, RefreshToken

from consent.models import Consent
from exports import jobs, rules
from exports.models import ExportJob
from exports.params import JobParams
from matching.models import MatchEntry
from pdex import audit
from pdex.jobs.models import AsyncJob
from pdex.models import AuditEvent
from tests.builders import consent_for, days_ago, encounter, make_member, match_group, store

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.org", "a-long-password-for-ops")
    client.force_login(user)
    return client


@pytest.fixture
def exported(partner, settings, tmp_path):
    """A completed export of three members to `partner`, run through the engine in this process."""
    from exports.writer import close_stream_connection

    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    members = []
    for k in range(3):
        member = make_member(f"m{k}", umb=f"UMB-{k}")
        store(encounter(f"m{k}-e", f"m{k}", days_ago(10)), member)
        consent_for(member, partner, policy="regular" if k == 0 else "sensitive")
        members.append(member)
    job = ExportJob.objects.create(partner=partner, kind=ExportJob.Kind.DAVINCI, group=match_group(partner, members),
                                   params=JobParams(window=rules.export_window(request_time=timezone.now())).to_json(),
                                   request_url="x", transaction_time=timezone.now())
    states = [jobs.run_chunk(chunk_id).state for chunk_id in jobs.plan(job.id)]
    assert "last" in states
    jobs.finalize(job.id)
    job.refresh_from_db()
    yield job
    close_stream_connection()


def test_the_dashboard_draws_its_charts(staff, exported):
    response = staff.get("/admin/")
    assert response.status_code == 200
    page = response.content.decode()
    for title in ("Service levels", "Export requests per day", "Members matched per day", "Time to fulfil",
                  "Resources sent per partner", "Bytes sent per partner", "Consents by status", "Partners by status"):
        assert title in page
    assert page.count("<svg") >= 7
    assert exported.partner.name in page  # in the per-partner bars
    assert "cdn" not in page.lower() and "<script src=\"http" not in page


def test_what_a_partner_received_and_its_csv(staff, exported, partner):
    audit.record("bulk-download", audit.SUCCESS, partner=partner, entity="OutputFile/x",
                 detail={"job": str(exported.pk)})
    page = staff.get(reverse("admin:exports_partnerreceipts_change", args=[partner.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "UMB-0" in text and "#regular (sensitive withheld)" in text and str(exported.pk)[:8] in text
    response = staff.get(reverse("admin:exports_partnerreceipts_csv", args=[partner.pk]))
    assert response.status_code == 200 and response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(row["member_umb"] for row in rows) == ["UMB-0", "UMB-1", "UMB-2"]
    assert {row["job"] for row in rows} == {str(exported.pk)}
    assert {row["member_umb"]: row["consent_policy"] for row in rows}["UMB-0"] == "regular"
    assert "Encounter" in rows[0]["resource_types"].split()
    assert AuditEvent.objects.filter(action="admin-received-csv", partner=partner).exists()
    listing = staff.get(reverse("admin:exports_partnerreceipts_changelist")).content.decode()
    assert partner.name in listing and "members received" in listing


def test_the_audit_list_shows_seconds_and_downloads_as_filtered(staff, partner):
    audit.record("token", audit.SUCCESS, partner=partner, reason="token issued")
    audit.record("export", audit.REFUSED, partner=partner, reason="429 throttled: too many running exports")
    page = staff.get(reverse("admin:pdex_auditevent_changelist")).content.decode()
    assert timezone.localtime(AuditEvent.objects.latest("recorded").recorded).strftime("%H:%M:%S") in page
    assert "Download CSV" in page
    response = staff.get(reverse("admin:pdex_auditevent_csv") + "?action__exact=export")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["action"] for row in rows] == ["export"] and rows[0]["outcome"] == "refused"


def test_a_job_is_read_only_but_its_priority(staff, exported):
    url = reverse("admin:exports_exportjob_change", args=[exported.pk])
    page = staff.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "<details" in text and "job parameters" in text
    assert 'name="priority"' in text and 'name="messages"' not in text and 'name="finished_at"' not in text
    response = staff.post(url, {"priority": AsyncJob.Priority.URGENT, "chunks-TOTAL_FORMS": "0",
                                "chunks-INITIAL_FORMS": "0", "_save": "Save"})
    assert response.status_code == 302, response.content[:2000]
    exported.refresh_from_db()
    assert exported.priority == AsyncJob.Priority.URGENT
    assert AuditEvent.objects.filter(action="job-priority", entity__endswith=str(exported.pk)).exists()


def test_a_job_near_its_deadline_is_flagged(staff, exported):
    ExportJob.objects.filter(pk=exported.pk).update(status=ExportJob.Status.RUNNING, finished_at=None,
                                                    deadline=timezone.now() + timedelta(hours=2))
    page = staff.get(reverse("admin:exports_exportjob_changelist") + "?deadline=soon").content.decode()
    assert "⚑ due soon" in page and str(exported.pk)[:8] in page


def test_fhir_records_are_folded_and_every_list_answers(staff, exported, partner):
    consent = Consent.objects.filter(partner=partner).first()
    page = staff.get(reverse("admin:consent_consent_change", args=[consent.pk])).content.decode()
    assert "<details" in page and "Consent as submitted" in page
    group = exported.group
    assert "<details" in staff.get(reverse("admin:matching_membermatchgroup_change", args=[group.pk])).content.decode()
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert staff.get(url).status_code == 200, url


def test_unused_oauth_models_are_hidden_and_names_read_well(staff):
    assert not any(admin.site.is_registered(m) for m in (Grant, IDToken, RefreshToken))
    assert MatchEntry._meta.verbose_name_plural == "match entries"
    assert "Match entries" in staff.get("/admin/").content.decode()
    assert staff.get(admin.site.site_url).status_code == 200  # "View site"
