"""Admins see every consent, what the decision says about it today, and can revoke it."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.utils import timezone

from consent import services
from consent.models import Consent


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
    list_display = ("id", "member", "partner", "policy", "status", "period_start", "period_end", "decision_today",
                    "submitted_via", "submitted_at")
    list_filter = ("status", "policy", "partner", PeriodFilter, "submitted_via")
    search_fields = ("member__umb", "member__fhir_id", "partner__name", "partner__npi")
    list_select_related = ("member", "partner")
    readonly_fields = ("member", "partner", "policy", "policy_uri", "period_start", "period_end", "status",
                       "resource", "submitted_via", "submitted_at", "updated_at", "revoked_at", "revoked_reason")
    actions = ["revoke_selected"]

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
