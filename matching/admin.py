"""Admins see match jobs with their progress and outcome counts, and the Groups with their members."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from matching.models import GroupMember, MatchEntry, MatchJob, MemberMatchGroup
from pdex.admin import charts, dashboard
from pdex.admin.common import fhir_json, seconds, short_id
from pdex.admin.jobs import DeadlineFilter, JobAdminMixin, cancel_jobs, make_urgent
from pdex.adminsite import Panel, register


@admin.register(MatchEntry)
class MatchEntryAdmin(admin.ModelAdmin):
    """One row per submitted MemberBundle; the reason is for admins and never goes into a Group."""

    list_display = ("job_id_short", "index", "outcome", "member", "reason")
    list_filter = ("outcome",)
    search_fields = ("job__id",)
    list_select_related = ("member",)
    readonly_fields = ("job", "index", "outcome", "member", "reason", "bundle_json")
    exclude = ("bundle",)

    @admin.display(description="job", ordering="job")
    def job_id_short(self, entry: MatchEntry) -> str:
        return short_id(entry.job_id)

    @admin.display(description="MemberBundle as submitted")
    def bundle_json(self, entry: MatchEntry) -> str:
        return fhir_json(entry.bundle, "MemberBundle")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the record of a match and of the Groups a partner holds: never deleted in admin


@admin.register(MatchJob)
class MatchJobAdmin(JobAdminMixin, admin.ModelAdmin):
    list_display = ("job_id", "partner", "status", "priority", "job_progress", "matched", "no_match",
                    "consent_constrained", "requested", "deadline_flag", "took")
    list_filter = ("status", "priority", DeadlineFilter, "partner")
    search_fields = ("id", "partner__name", "request_id")
    ordering = ("-created_at",)
    list_select_related = ("partner",)
    actions = [cancel_jobs, make_urgent]
    fieldsets = [
        (None, {"fields": ("id", "partner", "status", "priority", "job_progress", "matched", "no_match",
                           "consent_constrained")}),
        ("Service level", {"fields": ("requested", "deadline", "deadline_state", "took", "started_at", "finished_at",
                                      "expires_at", "last_polled_at")}),
        ("Request", {"fields": ("request_url", "request_id", "transaction_time", "status_link", "error_json")}),
    ]


@admin.register(GroupMember)
class GroupMemberAdmin(admin.ModelAdmin):
    """Members of the match Groups (a Group may hold thousands: listed and paginated here, not inline)."""

    list_display = ("group", "member")
    list_filter = ("group__partner",)
    search_fields = ("group__id", "member__umb", "member__fhir_id")
    list_select_related = ("group", "member")
    readonly_fields = ("group", "member")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the record of a match and of the Groups a partner holds: never deleted in admin


@admin.register(MemberMatchGroup)
class MemberMatchGroupAdmin(admin.ModelAdmin):
    list_display = ("group_id", "partner", "code", "member_count", "job_short", "created")
    list_filter = ("code", "partner")
    search_fields = ("id", "identifier_value", "partner__name")
    list_select_related = ("partner",)
    readonly_fields = ("id", "partner", "job", "code", "name", "identifier_system", "identifier_value",
                       "members_link", "resource_json", "version", "created_at", "last_updated")
    exclude = ("resource",)

    @admin.display(description="Group", ordering="id")
    def group_id(self, group: MemberMatchGroup) -> str:
        return short_id(group.pk)

    @admin.display(description="match job", ordering="job")
    def job_short(self, group: MemberMatchGroup) -> str:
        return short_id(group.job_id) if group.job_id else "–"

    @admin.display(description="created", ordering="created_at")
    def created(self, group: MemberMatchGroup) -> str:
        return seconds(group.created_at)

    @admin.display(description="Group (FHIR JSON)")
    def resource_json(self, group: MemberMatchGroup) -> str:
        return fhir_json(group.resource, f"Group/{group.pk} ({group.code})")

    @admin.display(description="members")
    def member_count(self, group: MemberMatchGroup) -> int:
        return group.groupmember_set.count()

    @admin.display(description="members")
    def members_link(self, group: MemberMatchGroup) -> str:
        url = reverse("admin:matching_groupmember_changelist") + f"?group__id__exact={group.pk}"
        return format_html('<a href="{}">{} member(s)</a>', url, group.groupmember_set.count())

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the record of a match and of the Groups a partner holds: never deleted in admin


@register
def match_panels(request) -> list[Panel]:
    days = dashboard.last_days()
    since = timezone.now() - timedelta(days=dashboard.DAYS)
    rows = []
    for day, matched, no_match, constrained in (
            MatchJob.objects.filter(created_at__gte=since).annotate(day=TruncDate("created_at")).values("day")
            .annotate(m=Sum("matched"), n=Sum("no_match"), c=Sum("consent_constrained"))
            .values_list("day", "m", "n", "c")):
        rows += [(day, "match", matched or 0), (day, "nomatch", no_match or 0),
                 (day, "consentconstraint", constrained or 0)]
    series = dashboard.per_day(rows, days, ["match", "nomatch", "consentconstraint"])
    return [Panel("Members matched per day, by outcome", charts.stacked_bars(
        [d.isoformat() for d in days], series or {"match": [0] * len(days)}, title="members matched per day"),
        note="$bulk-member-match members by the day of the request", order=20)]
