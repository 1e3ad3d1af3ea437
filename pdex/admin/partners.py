"""Admin for partners, trust anchors and the audit trail.

Status changes go through the approve / suspend actions (pdex.partners), so every one is audited and a
suspension revokes live tokens. The audit trail is read-only.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from oauth2_provider.models import AccessToken

from pdex import audit, partners
from pdex.admin.common import CsvExportMixin, fhir_json, seconds
from pdex.auth import jwks as jwks_lib
from pdex.models import AuditEvent, Partner, TrustAnchor

HISTORY_ROWS = 20


class KeySetForm(forms.ModelForm):
    """Keys by value must be a JWK Set of public RS384/ES384 keys; a JWKS URL must be https."""

    jwks_url = forms.URLField(required=False, max_length=500, assume_scheme="https", label="JWKS URL")

    def clean_jwks(self):
        jwks = self.cleaned_data.get("jwks")
        if not jwks:
            return None
        try:
            return jwks_lib.validate_public_jwks(jwks)
        except jwks_lib.InvalidKeySet as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean_jwks_url(self):
        url = self.cleaned_data.get("jwks_url") or ""
        if url:
            try:
                jwks_lib.check_jwks_url(url)
            except jwks_lib.InvalidKeySet as exc:
                raise forms.ValidationError(str(exc)) from exc
        return url


class PartnerForm(KeySetForm):
    class Meta:
        model = Partner
        fields = ["name", "npi", "payer_id", "allowed_scopes", "jwks", "jwks_url", "agreement_date",
                  "agreement_end", "contact_name", "contact_email"]

    def clean_allowed_scopes(self):
        scope = self.cleaned_data.get("allowed_scopes") or ""
        unknown = [item for item in scope.split() if item not in partners.clean_scopes(item).split()]
        if unknown:
            raise forms.ValidationError(f"Unknown scopes: {' '.join(unknown)}")
        return partners.clean_scopes(scope)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("jwks") and not cleaned.get("jwks_url") and not self.errors:
            raise forms.ValidationError("A partner needs its public keys: a JWK Set or a JWKS URL.")
        return cleaned


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    form = PartnerForm
    list_display = ["name", "status", "client_id", "npi", "registered_via", "agreement_date", "agreement_end",
                    "created_at", "received_link"]
    list_filter = ["status", "registered_via"]
    search_fields = ["name", "npi", "payer_id", "application__client_id"]
    readonly_fields = ["status", "client_id", "registered_via", "software_statement", "created_at", "updated_at",
                       "history", "received_link"]
    actions = ["approve_partners", "suspend_partners"]
    fieldsets = [
        (None, {"fields": ["name", "status", "client_id", "npi", "payer_id", "agreement_date", "agreement_end",
                           "match_failure_budget"]}),
        ("Access", {"fields": ["allowed_scopes", "jwks", "jwks_url"]}),
        ("Contact", {"fields": ["contact_name", "contact_email"]}),
        ("Registration", {"fields": ["registered_via", "software_statement", "created_at", "updated_at"]}),
        ("Token and registration history", {"fields": ["history", "received_link"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("application")

    @admin.display(description="data received")
    def received_link(self, partner: Partner) -> str:
        # The exports app keeps the page (pdex.admin never imports it): reached by its URL name.
        try:
            url = reverse("admin:exports_partnerreceipts_change", args=[partner.pk])
        except NoReverseMatch:
            return "–"
        return format_html('<a href="{}">what it received</a>', url)

    @admin.display(description="client id")
    def client_id(self, partner: Partner) -> str:
        return partner.client_id

    @admin.display(description="recent activity")
    def history(self, partner: Partner) -> str:
        if not partner.pk:
            return "-"
        events = partner.audit_events.order_by("-recorded")[:HISTORY_ROWS]
        live_tokens = AccessToken.objects.filter(application_id=partner.application_id,
                                                 expires__gt=timezone.now()).count()
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((f"{e.recorded:%Y-%m-%d %H:%M:%S}", e.action, e.get_outcome_display(), e.reason) for e in events),
        )
        link = reverse("admin:pdex_auditevent_changelist") + f"?partner__id__exact={partner.pk}"
        return format_html(
            '<p>{} live token(s). <a href="{}">Full audit trail</a></p>'
            "<table><tr><th>when</th><th>action</th><th>outcome</th><th>reason</th></tr>{}</table>",
            live_tokens, link, rows,
        )

    def save_model(self, request, partner: Partner, form, change: bool) -> None:
        if not change:
            partner.application = partners.new_application(partner.name)
            partner.registered_via = "admin"
        super().save_model(request, partner, form, change)
        action = "partner-change" if change else "partner-create"
        audit.record(action, audit.SUCCESS, partner=partner, reason=f"by {request.user}",
                     detail={"fields": sorted(form.changed_data)}, request=request)

    @admin.action(description="Approve: allow tokens")
    def approve_partners(self, request, queryset: QuerySet[Partner]) -> None:
        for partner in queryset:
            partners.approve(partner, actor=str(request.user), request=request)
        self.message_user(request, f"{queryset.count()} partner(s) approved.", messages.SUCCESS)

    @admin.action(description="Suspend: refuse tokens and revoke live ones")
    def suspend_partners(self, request, queryset: QuerySet[Partner]) -> None:
        for partner in queryset:
            partners.suspend(partner, actor=str(request.user), request=request)
        self.message_user(request, f"{queryset.count()} partner(s) suspended.", messages.WARNING)


class TrustAnchorForm(KeySetForm):
    class Meta:
        model = TrustAnchor
        fields = ["name", "jwks", "jwks_url", "active"]


@admin.register(TrustAnchor)
class TrustAnchorAdmin(admin.ModelAdmin):
    form = TrustAnchorForm
    list_display = ["name", "active", "jwks_url", "created_at"]
    list_filter = ["active"]


@admin.register(AuditEvent)
class AuditEventAdmin(CsvExportMixin, admin.ModelAdmin):
    """The audit trail, read-only: to the second, filtered, searchable, and downloadable as it is filtered."""

    list_display = ["when", "action", "outcome", "partner", "reason", "entity", "source_ip"]
    list_filter = ["action", "outcome", "partner", ("recorded", admin.DateFieldListFilter)]
    search_fields = ["client_id", "reason", "entity", "=source_ip"]
    date_hierarchy = "recorded"
    list_select_related = ["partner"]
    readonly_fields = ["when", "action", "outcome", "partner", "client_id", "reason", "entity", "detail_json",
                       "source_ip"]
    exclude = ["recorded", "detail"]
    csv_columns = (("recorded", "recorded"), ("action", "action"), ("outcome", lambda e: e.get_outcome_display()),
                   ("partner", "partner__name"), ("client_id", "client_id"), ("reason", "reason"),
                   ("entity", "entity"), ("detail", "detail"), ("source_ip", "source_ip"))

    @admin.display(description="recorded", ordering="recorded")
    def when(self, event: AuditEvent) -> str:
        return seconds(event.recorded)

    @admin.display(description="detail")
    def detail_json(self, event: AuditEvent) -> str:
        return fhir_json(event.detail, open_=True)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
