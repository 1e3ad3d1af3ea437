"""Admins see match jobs with their progress and outcome counts, and the Groups with their members."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from matching.models import GroupMember, MatchEntry, MatchJob, MemberMatchGroup


@admin.register(MatchEntry)
class MatchEntryAdmin(admin.ModelAdmin):
    """One row per submitted MemberBundle; the reason is for admins and never goes into a Group."""

    list_display = ("job", "index", "outcome", "member", "reason")
    list_filter = ("outcome",)
    search_fields = ("job__id",)
    list_select_related = ("member",)
    readonly_fields = ("job", "index", "outcome", "member", "reason", "bundle")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(MatchJob)
class MatchJobAdmin(admin.ModelAdmin):
    list_display = ("id", "partner", "status", "progress", "matched", "no_match", "consent_constrained",
                    "created_at", "finished_at")
    list_filter = ("status", "partner")
    readonly_fields = ("id", "partner", "status", "request_url", "transaction_time", "progress_done", "progress_total",
                       "matched", "no_match", "consent_constrained", "error", "created_at", "started_at",
                       "finished_at", "expires_at", "last_polled_at")

    @admin.display(description="progress")
    def progress(self, job: MatchJob) -> str:
        return f"{job.progress_done}/{job.progress_total}"

    def has_add_permission(self, request) -> bool:
        return False


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


@admin.register(MemberMatchGroup)
class MemberMatchGroupAdmin(admin.ModelAdmin):
    list_display = ("id", "partner", "code", "name", "member_count", "job", "created_at", "last_updated")
    list_filter = ("code", "partner")
    search_fields = ("id", "identifier_value", "partner__name")
    readonly_fields = ("id", "partner", "job", "code", "name", "identifier_system", "identifier_value",
                       "members_link", "resource", "version", "created_at", "last_updated")

    @admin.display(description="members")
    def member_count(self, group: MemberMatchGroup) -> int:
        return group.groupmember_set.count()

    @admin.display(description="members")
    def members_link(self, group: MemberMatchGroup) -> str:
        url = reverse("admin:matching_groupmember_changelist") + f"?group__id__exact={group.pk}"
        return format_html('<a href="{}">{} member(s)</a>', url, group.groupmember_set.count())

    def has_add_permission(self, request) -> bool:
        return False
