"""Admin for export jobs (progress, per-type counts, files, errors, cancel) and output files.

MatchJob's admin lives with the matching app; both use the same cancel (pdex.jobs.asyncstatus.cancel_job).
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from exports import jobs
from exports.models import ExportChunk, ExportJob
from pdex.jobs import asyncstatus
from pdex.jobs.models import AsyncJob


def progress(job: AsyncJob) -> str:
    """"done/total (percent)" for list pages."""
    if not job.progress_total:
        return "–"
    return f"{job.progress_done}/{job.progress_total} ({100 * job.progress_done // job.progress_total}%)"


class ExportChunkInline(admin.TabularInline):
    model = ExportChunk
    fields = ("sequence", "resource_type", "members", "status", "attempts", "count", "size", "lease_owner",
              "lease_expires", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ("sequence",)

    @admin.display(description="members")
    def members(self, chunk: ExportChunk) -> int:
        return len(chunk.member_ids)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.action(description="Cancel the selected jobs and delete their files")
def cancel_jobs(modeladmin, request, queryset: QuerySet) -> None:
    cancelled = sum(asyncstatus.cancel_job(job, request, reason=f"cancelled by admin {request.user}")
                    for job in queryset)
    modeladmin.message_user(request, f"{cancelled} job(s) cancelled.", messages.SUCCESS)


@admin.action(description="Re-run the selected failed or completed jobs (same status URL)")
def rerun_jobs(modeladmin, request, queryset: QuerySet) -> None:
    rerun = sum(jobs.rerun(job.pk, request=request) for job in queryset)
    skipped = queryset.count() - rerun
    modeladmin.message_user(request, f"{rerun} job(s) re-run; {skipped} running or cancelled job(s) left alone.",
                            messages.SUCCESS)


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "partner", "status", "job_progress", "member_count", "created_at",
                    "finished_at", "expires_at")
    list_filter = ("status", "kind", "partner")
    search_fields = ("id", "partner__name", "request_url")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = [ExportChunkInline]
    actions = [cancel_jobs, rerun_jobs]
    readonly_fields = ("id", "kind", "partner", "group", "status", "job_progress", "request_url", "params_text",
                       "member_count", "type_counts", "files", "error_text", "transaction_time", "created_at",
                       "started_at", "finished_at", "expires_at", "last_polled_at", "status_link")
    exclude = ("params", "counts", "error", "progress_done", "progress_total")

    @admin.display(description="progress")
    def job_progress(self, job: ExportJob) -> str:
        return progress(job)

    @admin.display(description="status URL")
    def status_link(self, job: ExportJob) -> str:
        return asyncstatus.status_url(job)

    @admin.display(description="parameters")
    def params_text(self, job: ExportJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.params, indent=2))

    @admin.display(description="resources per type")
    def type_counts(self, job: ExportJob) -> str:
        if not job.counts:
            return "–"
        return format_html_join("", "<div>{}: {}</div>", sorted(job.counts.items()))

    @admin.display(description="files")
    def files(self, job: ExportJob) -> str:
        rows = [(reverse("admin:pdex_outputfile_change", args=[f.pk]), f.kind, f.resource_type, f.sequence,
                 f.count, f.size) for f in asyncstatus.job_files(job)]
        if not rows:
            return "–"
        return format_html_join("", '<div><a href="{}">{} {} #{}</a>: {} resources, {} bytes</div>', rows)

    @admin.display(description="error")
    def error_text(self, job: ExportJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.error, indent=2)) if job.error else "–"

    def has_add_permission(self, request) -> bool:
        return False
