"""Admins see every consent, what the decision says about it today, and can revoke it."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.html import format_html

from consent import services
from consent.models import Consent
from pdex.admin import charts
from pdex.admin.common import fhir_json, seconds
from pdex.adminsite import Panel, register


class PeriodFilter(admin.SimpleListFilter):
    title = "period"
    parameter_name = "period"

    def lookups(self, request, model_admin):
        return [("current", "valid today"), ("expired", "ended"), ("future", "not started")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        today = timezone.now().date()
        if self.value() == "current":
            return queryset.filter(period_start__lte=today, period_end__gte=today)
        if self.value() == "expired":
            return queryset.filter(period_end__lt=today)
        if self.value() == "future":
            return queryset.filter(period_start__gt=today)
        return queryset


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ("id", "member_umb", "partner", "policy_code", "status", "period_start", "period_end",
                    "decision_now", "submitted")
    list_filter = ("status", "policy", "partner", PeriodFilter, "submitted_via")
    search_fields = ("member__umb", "member__fhir_id", "partner__name", "partner__npi")
    list_select_related = ("member", "partner")
    readonly_fields = ("member", "partner", "policy", "policy_uri", "period_start", "period_end", "status",
                       "resource_json", "submitted_via", "submitted_at", "updated_at", "revoked_at", "revoked_reason")
    exclude = ("resource",)
    actions = ["revoke_selected"]

    @admin.display(description="member", ordering="member__umb")
    def member_umb(self, consent: Consent) -> str:
        return consent.member.umb

    @admin.display(description="submitted", ordering="submitted_at")
    def submitted(self, consent: Consent) -> str:
        return f"{seconds(consent.submitted_at)} ({consent.submitted_via})"

    @admin.display(description="Consent (FHIR JSON)")
    def resource_json(self, consent: Consent) -> str:
        return fhir_json(consent.resource, "Consent as submitted")

    @admin.display(description="policy", ordering="policy")
    def policy_code(self, consent: Consent) -> str:
        return f"#{consent.policy}" if consent.policy != Consent.Policy.UNKNOWN else "unknown"

    @admin.display(description="decision today")
    def decision_now(self, consent: Consent) -> str:
        decision = services.decide_for_partner(services.facts_of(consent), consent.partner)
        return format_html('<span title="{}">{}</span>', decision.reason, decision.kind)

    @admin.display(description="decision today")
    def decision_today(self, consent: Consent) -> str:
        decision = services.decide_for_partner(services.facts_of(consent), consent.partner)
        return f"{decision.kind} ({decision.reason})"

    @admin.action(description="Revoke the selected consents")
    def revoke_selected(self, request, queryset: QuerySet) -> None:
        count = 0
        for consent in queryset.select_related("member", "partner").exclude(status=Consent.Status.REVOKED):
            services.revoke(consent, f"revoked in admin by {request.user}", actor=str(request.user))
            count += 1
        self.message_user(request, f"{count} consent(s) revoked.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False


@register
def consent_panels(request) -> list[Panel]:
    today = timezone.now().date()
    counts = dict(Consent.objects.values_list("status").annotate(n=Count("id")))
    ended = Consent.objects.filter(status=Consent.Status.ACTIVE, period_end__lt=today).count()
    rows = [("active, in period", counts.get(Consent.Status.ACTIVE, 0) - ended), ("active, period ended", ended),
            ("revoked", counts.get(Consent.Status.REVOKED, 0)), ("rejected", counts.get(Consent.Status.REJECTED, 0))]
    return [Panel("Consents by status", charts.horizontal_bars(
        [(label, n, f"{n:,}") for label, n in rows], title="consents by status", bar_colour="#009E73"),
        note="one consent per member and partner", order=50)]
