"""Admin of the requesting side: the previous payers and our registration with each, our signing keys, the
consents we collect (the form our staff fill in), and every pull with its stages, counts, errors and a re-run;
the members a previous payer did not match, with what to do about each."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from requesting import consents, keys, registry
from requesting.consent_resource import (
    ConsentInvalid,
    ConsentTerms,
    OldCard,
    PayerRef,
    Representative,
    consent_resource,
    scenario_period,
)
from requesting.models import CollectedConsent, MemberLink, PreviousPayer, PullJob, PullMember, PullUnit, SigningKey
from requesting.pull import stages
from requesting.pull.start import CannotPull, start_pulls


def _pre(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2)) if value else "–"


def _counts(value: dict) -> str:
    if not value:
        return "–"
    return format_html_join("", "<div>{}: {}</div>", sorted(value.items()))


# --- keys --------------------------------------------------------------------------------------------

@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    """Our client keys. A roll-over publishes the next key first, so two are in the JWKS meanwhile."""

    list_display = ("kid", "alg", "state", "created_at", "activate_after", "activated_at", "withdraw_after")
    list_filter = ("state",)
    readonly_fields = ("kid", "alg", "state", "public_jwk", "created_at", "activate_after", "activated_at",
                       "retired_at", "withdraw_after", "jwks_url")
    exclude = ("private_jwk_sealed",)
    actions = ["begin_rollover", "advance_rollover"]

    @admin.display(description="our JWKS URL")
    def jwks_url(self, key: SigningKey) -> str:
        return keys.jwks_url()

    @admin.action(description="Begin a key roll-over (the new key signs after P2P_KEY_PUBLISH_SECONDS)")
    def begin_rollover(self, request, queryset: QuerySet) -> None:
        key = keys.rotate()
        self.message_user(request, f"Next key {key.kid} published; it signs from {key.activate_after:%Y-%m-%d %H:%M}.")

    @admin.action(description="Make the roll-over's due steps now")
    def advance_rollover(self, request, queryset: QuerySet) -> None:
        steps = keys.advance()
        self.message_user(request, "; ".join(steps) or "Nothing is due yet.")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- previous payers -------------------------------------------------------------------------------

@admin.register(PreviousPayer)
class PreviousPayerAdmin(admin.ModelAdmin):
    """Adding a payer discovers it; then register dynamically, or type the client id it gave us."""

    list_display = ("name", "npi", "fhir_base_url", "registration", "client_id", "active", "last_token_at",
                    "problem")
    list_filter = ("registration", "active")
    search_fields = ("name", "npi", "fhir_base_url")
    fields = ("name", "npi", "fhir_base_url", "member_id_system", "active", "software_statement", "client_id",
              "registration", "granted_scope", "registered_at", "token_endpoint", "registration_endpoint",
              "signing_algorithms", "operations", "discovered_at", "discovery_error", "last_token_at",
              "last_error", "our_jwks_url")
    readonly_fields = ("registration", "granted_scope", "registered_at", "token_endpoint", "registration_endpoint",
                       "signing_algorithms", "operations", "discovered_at", "discovery_error", "last_token_at",
                       "last_error", "our_jwks_url")
    actions = ["discover", "register", "test_connection", "pull_now"]

    @admin.display(description="our JWKS URL (register it with them)")
    def our_jwks_url(self, payer: PreviousPayer) -> str:
        return keys.jwks_url()

    @admin.display(description="problem")
    def problem(self, payer: PreviousPayer) -> str:
        return (payer.last_error or payer.discovery_error)[:120] or "–"

    def save_model(self, request, payer: PreviousPayer, form, change: bool) -> None:
        typed_client_id = "client_id" in form.changed_data and payer.client_id
        super().save_model(request, payer, form, change)
        if typed_client_id:
            registry.set_client_id(payer, payer.client_id, actor=str(request.user))
        if not change or "fhir_base_url" in form.changed_data:
            try:
                registry.refresh_discovery(payer)
            except registry.RegistrationFailed as exc:
                self.message_user(request, str(exc), messages.WARNING)

    @admin.action(description="Discover again (SMART configuration and CapabilityStatement)")
    def discover(self, request, queryset: QuerySet) -> None:
        for payer in queryset:
            try:
                registry.refresh_discovery(payer)
                self.message_user(request, f"{payer.name}: {', '.join(payer.operations) or 'no operations'}")
            except registry.RegistrationFailed as exc:
                self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Register dynamically (RFC 7591) with our JWKS URL")
    def register(self, request, queryset: QuerySet) -> None:
        for payer in queryset:
            try:
                registry.register_dynamically(payer, actor=str(request.user))
                self.message_user(request, f"{payer.name}: registered as {payer.client_id}; "
                                           f"connection: {registry.check_connection(payer)}")
            except registry.RegistrationFailed as exc:
                self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Check the connection (ask for a token)")
    def test_connection(self, request, queryset: QuerySet) -> None:
        for payer in queryset:
            answer = registry.check_connection(payer)
            self.message_user(request, f"{payer.name}: {answer}", messages.SUCCESS if answer == "ok" else
                              messages.ERROR)

    @admin.action(description="Pull now (every member with a valid consent)")
    def pull_now(self, request, queryset: QuerySet) -> None:
        for payer in queryset:
            try:
                jobs = start_pulls(payer, trigger=PullJob.Trigger.ADMIN, actor=str(request.user))
            except CannotPull as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.message_user(request, f"{payer.name}: {len(jobs)} pull(s) started" if jobs else
                              f"{payer.name}: no member with a valid consent is waiting")


# --- consents we collect ---------------------------------------------------------------------------

class CollectedConsentForm(forms.ModelForm):
    """What our staff fill in: who, for which previous payer, the policy and scenario (the period follows the
    scenario unless given), the old card, and a representative when someone else consents."""

    period_start = forms.DateField(required=False, help_text="empty: today")
    period_end = forms.DateField(required=False, help_text="empty: from the scenario (90 days after our coverage "
                                                           "starts, or the end of the old coverage)")

    class Meta:
        model = CollectedConsent
        fields = ("member", "previous_payer", "policy", "scenario", "coverage_start", "period_start", "period_end",
                  "old_member_id", "old_subscriber_id", "old_relationship", "old_coverage_end",
                  "representative_name", "representative_role", "representative_relationship")

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            start, end = scenario_period(scenario=data["scenario"], collected_on=data.get("period_start") or
                                         timezone.localdate(), coverage_start=data["coverage_start"],
                                         old_coverage_end=data.get("old_coverage_end"))
            self.terms = ConsentTerms(policy=data["policy"], period_start=start,
                                      period_end=data.get("period_end") or end)
            self.card = OldCard(member_id=data.get("old_member_id", ""),
                                subscriber_id=data.get("old_subscriber_id", ""),
                                relationship=data.get("old_relationship") or "self",
                                coverage_end=data.get("old_coverage_end"))
            self.representative = Representative(
                name=data["representative_name"], role=data.get("representative_role") or "",
                relationship=data.get("representative_relationship", "")) if data.get("representative_name") else None
            payer = data["previous_payer"]
            draft = consent_resource(consent_id="draft", patient_id=data["member"].fhir_id, terms=self.terms,
                                     source=PayerRef(npi=payer.npi, name=payer.name), recipient=consents.us(),
                                     collected_on=start, record_system=consents.record_system(),
                                     representative=self.representative)
            consents.check_acceptable(draft, payer, on=max(self.terms.period_start, timezone.localdate()))
        except ConsentInvalid as exc:
            raise forms.ValidationError(str(exc)) from None
        data["period_start"], data["period_end"] = self.terms.period_start, self.terms.period_end
        return data


@admin.register(CollectedConsent)
class CollectedConsentAdmin(admin.ModelAdmin):
    """Record a member's consent here (or through POST /fhir/Consent); saving again replaces it (correct the
    old card after a no-match, and the next pull asks again). Revoke with the action: audited, final."""

    form = CollectedConsentForm
    list_display = ("member", "previous_payer", "policy", "scenario", "period_start", "period_end", "status",
                    "next_pull_at", "last_pulled_at", "last_outcome")
    list_filter = ("status", "policy", "scenario", "previous_payer", "collected_via")
    search_fields = ("member__umb", "member__fhir_id", "member__member_number", "old_member_id")
    autocomplete_fields = ("member",)
    readonly_fields = ("status", "collected_via", "collected_by", "collected_at", "revoked_at", "revoked_reason",
                       "last_pulled_at", "last_transaction_time", "next_pull_at", "resource_text")
    actions = ["revoke"]

    @admin.display(description="the Consent we send")
    def resource_text(self, consent: CollectedConsent) -> str:
        return _pre(consent.resource)

    @admin.display(description="last outcome")
    def last_outcome(self, consent: CollectedConsent) -> str:
        last = consent.pull_members.order_by("-job__created_at").first()
        return last.get_outcome_display() if last else "–"

    def save_model(self, request, consent: CollectedConsent, form: CollectedConsentForm, change: bool) -> None:
        data = form.cleaned_data
        saved = consents.record_consent(
            member=data["member"], payer=data["previous_payer"], terms=form.terms, scenario=data["scenario"],
            coverage_start=data["coverage_start"], old_card=form.card, representative=form.representative,
            via="admin", actor=str(request.user), request=request)
        consent.pk = saved.pk

    @admin.action(description="Revoke the selected consents (no more requests for these members)")
    def revoke(self, request, queryset: QuerySet) -> None:
        count = 0
        for consent in queryset.exclude(status=CollectedConsent.Status.REVOKED):
            consents.revoke_consent(consent, reason=f"revoked in admin by {request.user}", actor=str(request.user),
                                    request=request)
            count += 1
        self.message_user(request, f"{count} consent(s) revoked.")


# --- pulls -----------------------------------------------------------------------------------------

class PullUnitInline(admin.TabularInline):
    model = PullUnit
    fields = ("sequence", "step", "resource_type", "manifest_kind", "status", "attempts", "expected_count",
              "received", "ingested", "unchanged", "invalid", "dropped", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("sequence",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PullJob)
class PullJobAdmin(admin.ModelAdmin):
    list_display = ("id", "previous_payer", "trigger", "stage", "status", "progress", "members", "matched",
                    "no_match", "consent_constrained", "since", "created_at", "finished_at")
    list_filter = ("status", "stage", "previous_payer", "trigger")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = [PullUnitInline]
    actions = ["rerun"]
    readonly_fields = ("id", "previous_payer", "trigger", "stage", "status", "progress", "remote_progress",
                       "members", "matched", "no_match", "consent_constrained", "revoked", "not_matched_link",
                       "since", "single", "match_status_url", "matched_group_id", "export_status_url",
                       "export_transaction_time", "per_type", "dropped_text", "notes_text", "error_text",
                       "created_at", "started_at", "finished_at")
    exclude = ("received", "ingested", "unchanged", "invalid", "dropped", "notes", "error", "export_manifest",
               "progress_done", "progress_total", "transaction_time", "expires_at", "finalize_started_at")

    @admin.display(description="progress")
    def progress(self, job: PullJob) -> str:
        return f"{job.progress_done}/{job.progress_total} steps"

    @admin.display(description="members not matched")
    def not_matched_link(self, job: PullJob) -> str:
        url = reverse("admin:requesting_pullmember_changelist") + f"?job__id__exact={job.pk}&outcome__in=" \
                                                                 "nomatch,consentconstraint"
        return format_html('<a href="{}">{} to act on</a>', url, job.no_match + job.consent_constrained)

    @admin.display(description="resources per type: received / new or changed / unchanged / invalid")
    def per_type(self, job: PullJob) -> str:
        types = sorted(set(job.received) | set(job.ingested))
        if not types:
            return "–"
        rows = [(t, job.received.get(t, 0), job.ingested.get(t, 0), job.unchanged.get(t, 0), job.invalid.get(t, 0))
                for t in types]
        return format_html_join("", "<div>{}: {} / {} / {} / {}</div>", rows)

    @admin.display(description="not taken in")
    def dropped_text(self, job: PullJob) -> str:
        return _counts(job.dropped)

    @admin.display(description="notes (their error files, validation failures)")
    def notes_text(self, job: PullJob) -> str:
        return format_html_join("", "<div>{}</div>", ((note,) for note in job.notes)) if job.notes else "–"

    @admin.display(description="error")
    def error_text(self, job: PullJob) -> str:
        return _pre(job.error)

    @admin.action(description="Re-run the selected finished pulls (a new pull of the same members)")
    def rerun(self, request, queryset: QuerySet) -> None:
        started = [job for job in (stages.rerun(str(j.pk), actor=str(request.user)) for j in queryset) if job]
        self.message_user(request, f"{len(started)} pull(s) started again; running ones were left alone.")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(PullMember)
class PullMemberAdmin(admin.ModelAdmin):
    """The members of each pull and what the previous payer's match made of them: act on the not matched."""

    list_display = ("member", "job_link", "outcome", "action")
    list_filter = ("outcome", "job__previous_payer")
    search_fields = ("member__umb", "member__fhir_id", "member__member_number", "job__id")
    list_select_related = ("member", "job", "job__previous_payer")
    readonly_fields = ("job", "member", "consent", "outcome", "their_patient_id", "action")

    @admin.display(description="pull")
    def job_link(self, pulled: PullMember) -> str:
        url = reverse("admin:requesting_pulljob_change", args=[pulled.job_id])
        return format_html('<a href="{}">{} {}</a>', url, pulled.job.previous_payer.name,
                           f"{pulled.job.created_at:%Y-%m-%d %H:%M}")

    def lookup_allowed(self, lookup, value, request=None) -> bool:
        return lookup in ("outcome__in", "job__id__exact") or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(MemberLink)
class MemberLinkAdmin(admin.ModelAdmin):
    list_display = ("member", "previous_payer", "their_patient_id", "their_umb", "linked_at")
    list_filter = ("previous_payer",)
    search_fields = ("member__umb", "member__fhir_id", "their_patient_id", "their_umb")
    readonly_fields = ("member", "previous_payer", "their_patient_id", "their_umb", "linked_at")

    def has_add_permission(self, request) -> bool:
        return False

