"""Admin for the files of every asynchronous job (exports' and bulk member match's): read-only."""

from __future__ import annotations

from django.contrib import admin

from pdex.jobs.models import OutputFile


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
