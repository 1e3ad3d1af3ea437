"""Admin for what every kind of asynchronous job shares: its files (read-only), priority and deadline."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import F, QuerySet
from django.utils import timezone
from django.utils.html import format_html

from pdex import audit
from pdex.admin.charts import duration
from pdex.admin.common import fhir_json, seconds, short_id
from pdex.admin.confirm import confirmed_action
from pdex.jobs import asyncstatus, servicelevels
from pdex.jobs.models import AsyncJob, OutputFile


@admin.register(OutputFile)
class OutputFileAdmin(admin.ModelAdmin):
    list_display = ("storage_key", "kind", "resource_type", "count", "size", "partner", "created_at")
    list_filter = ("kind", "resource_type", "partner")
    search_fields = ("=job_id", "storage_key")
    readonly_fields = ("id", "job_id", "partner", "kind", "resource_type", "storage_key", "count", "size",
                       "sequence", "created_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class DeadlineFilter(admin.SimpleListFilter):
    """Open jobs near or past their deadline, finished jobs that missed it."""

    title = "deadline"
    parameter_name = "deadline"

    def lookups(self, request, model_admin):
        return [("soon", "open, due within the warning time or overdue"), ("overdue", "open and overdue"),
                ("missed", "finished after the deadline")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "soon":
            return queryset.filter(status__in=servicelevels.OPEN, deadline__lt=servicelevels.warning_time(now))
        if self.value() == "overdue":
            return queryset.filter(status__in=servicelevels.OPEN, deadline__lt=now)
        if self.value() == "missed":
            return queryset.filter(finished_at__gt=F("deadline"))
        return queryset


@admin.action(description="Raise the selected jobs to urgent (their work is claimed first)")
def make_urgent(modeladmin, request, queryset: QuerySet) -> None:
    raised = 0
    for job in queryset.select_related("partner").filter(priority__lt=AsyncJob.Priority.URGENT):
        if type(job).objects.filter(pk=job.pk).update(priority=AsyncJob.Priority.URGENT):
            audit.record("job-priority", audit.SUCCESS, partner=job.partner, entity=f"{job._meta.model_name}/{job.pk}",
                         reason=f"raised to urgent by {request.user}", request=request)
            raised += 1
    modeladmin.message_user(request, f"{raised} job(s) raised to urgent.", messages.SUCCESS)


class JobAdminMixin:
    """What the admin of every kind of job shows: short ids, priority, deadline flags, durations, JSON folded.

    Only `priority` may be changed (an admin may raise it); everything else is the job's record.
    """

    @admin.display(description="job", ordering="id")
    def job_id(self, job: AsyncJob) -> str:
        return short_id(job.pk)

    @admin.display(description="progress")
    def job_progress(self, job: AsyncJob) -> str:
        if not job.progress_total:
            return "–"
        return f"{job.progress_done}/{job.progress_total} ({100 * job.progress_done // job.progress_total}%)"

    @admin.display(description="requested", ordering="created_at")
    def requested(self, job: AsyncJob) -> str:
        return seconds(job.created_at)

    @admin.display(description="deadline", ordering="deadline")
    def deadline_flag(self, job: AsyncJob) -> str:
        state = job.deadline_state()
        style = {"overdue": "color:#D55E00;font-weight:bold", "due soon": "color:#B36200;font-weight:bold",
                 "missed": "color:#D55E00"}.get(state, "")
        return format_html('<span style="{}" title="due {}">{}</span>', style, seconds(job.deadline),
                           "⚑ " + state if state in ("overdue", "due soon") else state)

    @admin.display(description="against the deadline")
    def deadline_state(self, job: AsyncJob) -> str:
        return self.deadline_flag(job)

    @admin.display(description="took")
    def took(self, job: AsyncJob) -> str:
        if not job.finished_at:
            return "–"
        return duration((job.finished_at - job.created_at).total_seconds())

    @admin.display(description="status URL")
    def status_link(self, job: AsyncJob) -> str:
        return asyncstatus.status_url(job)

    @admin.display(description="error")
    def error_json(self, job: AsyncJob) -> str:
        return fhir_json(job.error)

    def get_readonly_fields(self, request, obj=None):
        return [name for name in flatten_fieldsets(self.get_fieldsets(request, obj)) if name != "priority"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        """A job is cancelled, never deleted: its row is the record of what was asked and sent."""
        return False

    def save_model(self, request, job, form, change: bool) -> None:
        super().save_model(request, job, form, change)
        if "priority" in form.changed_data:
            audit.record("job-priority", audit.SUCCESS, partner=job.partner, entity=f"{job._meta.model_name}/{job.pk}",
                         reason=f"set to {job.get_priority_display()} by {request.user}", request=request)


def _cancel(request, queryset: QuerySet, reason: str) -> int:
    return sum(asyncstatus.cancel_job(job, request, reason=f"cancelled by admin {request.user}: {reason}")
               for job in queryset)


cancel_jobs = confirmed_action(name="cancel_jobs", description="Cancel the selected jobs and delete their files",
                               verb="cancelled", perform=_cancel)
