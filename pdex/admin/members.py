"""Admin for members and their resources (read-only): the store is written by ingest, never by hand."""

from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from pdex.models import Member, Resource


class ReadOnlyAdmin(admin.ModelAdmin):
    """View and search only; changes come from load_ndjson / synthesize_payer_data."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def pretty_json(value: object) -> str:
    return format_html('<pre style="white-space: pre-wrap; max-width: 100em">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


@admin.register(Member)
class MemberAdmin(ReadOnlyAdmin):
    list_display = ("umb", "member_number", "subscriber_id", "family", "given", "birth_date", "gender",
                    "postal_code", "resources_link")
    list_filter = ("gender",)
    search_fields = ("umb", "member_number", "subscriber_id", "fhir_id", "family", "given")
    ordering = ("umb",)
    readonly_fields = ("fhir_id", "umb", "member_number", "member_number_system", "subscriber_id",
                       "identity_coverage", "family", "given", "birth_date", "gender", "postal_code", "created_at",
                       "updated_at", "resources_link")

    @admin.display(description="resources")
    def resources_link(self, member: Member) -> str:
        url = reverse("admin:pdex_resource_changelist") + f"?member__id__exact={member.pk}"
        return format_html('<a href="{}">resources</a>', url)


class SensitiveFilter(admin.SimpleListFilter):
    title = "sensitivity"
    parameter_name = "sensitive"

    def lookups(self, request, model_admin):
        return (("yes", "sensitive"), ("no", "not sensitive"))

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(sensitive=self.value() == "yes")
        return queryset


class ResourceTypeFilter(admin.SimpleListFilter):
    """Resource types present in the store (a DISTINCT over an indexed column, not a fixed list)."""

    title = "resource type"
    parameter_name = "resource_type"

    def lookups(self, request, model_admin):
        types = Resource.objects.order_by("resource_type").values_list("resource_type", flat=True).distinct()
        return [(t, t) for t in types]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        return queryset.filter(resource_type=self.value()) if self.value() else queryset


@admin.register(Resource)
class ResourceAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "member_umb", "service_start", "last_updated", "sensitive", "eob_use",
                    "pa_status")
    list_filter = (ResourceTypeFilter, SensitiveFilter, "eob_use", "pa_status", "pa_drug")
    search_fields = ("fhir_id", "=member__umb", "=member__member_number", "=member__subscriber_id",
                     "=member__fhir_id")
    list_select_related = ("member",)
    show_full_result_count = False  # counting 380k rows on every page view is the slow part
    exclude = ("body",)
    readonly_fields = ("resource_type", "fhir_id", "member", "last_updated", "service_start", "service_end",
                       "sensitive", "clinical_status", "eob_use", "pa_status", "pa_status_changed",
                       "pa_period_end", "pa_drug", "refs", "ingested_at", "body_json")

    @admin.display(description="member", ordering="member__umb")
    def member_umb(self, resource: Resource) -> str:
        return resource.member.umb if resource.member_id else "—"

    @admin.display(description="resource (FHIR JSON)")
    def body_json(self, resource: Resource) -> str:
        return pretty_json(resource.body)
