"""Admin for export jobs (progress, per-type counts, files, errors, cancel, priority), what each partner
received (a page and its CSV), and the dashboard's export panels.

MatchJob's admin lives with the matching app; both use the same cancel (pdex.jobs.asyncstatus.cancel_job).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from exports import jobs, received
from exports.models import ExportChunk, ExportJob, PartnerReceipts
from pdex import audit
from pdex.admin import charts
from pdex.admin.charts import human_bytes
from pdex.admin.common import fhir_json, seconds, streaming_csv
from pdex.admin.jobs import DeadlineFilter, JobAdminMixin, cancel_jobs, make_urgent
from pdex.adminsite import Panel, register
from pdex.jobs import asyncstatus
from pdex.models import Partner


class ExportChunkInline(admin.TabularInline):
    model = ExportChunk
    fields = ("sequence", "resource_type", "members", "withdrawn", "status", "attempts", "count", "size",
              "lease_owner", "lease_expires", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ("sequence",)

    @admin.display(description="members")
    def members(self, chunk: ExportChunk) -> int:
        return len(chunk.member_ids)

    @admin.display(description="left out (consent ended)")
    def withdrawn(self, chunk: ExportChunk) -> int:
        return len(chunk.withdrawn_member_ids)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.action(description="Re-run the selected failed or completed jobs (same status URL)")
def rerun_jobs(modeladmin, request, queryset: QuerySet) -> None:
    rerun = sum(jobs.rerun(job.pk, request=request) for job in queryset)
    skipped = queryset.count() - rerun
    modeladmin.message_user(request, f"{rerun} job(s) re-run; {skipped} running or cancelled job(s) left alone.",
                            messages.SUCCESS)


@admin.register(ExportJob)
class ExportJobAdmin(JobAdminMixin, admin.ModelAdmin):
    list_display = ("job_id", "kind", "partner", "status", "priority", "job_progress", "members", "requested",
                    "deadline_flag", "took")
    list_filter = ("status", "kind", "priority", DeadlineFilter, "partner")
    search_fields = ("id", "partner__name", "request_url", "request_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_select_related = ("partner",)
    inlines = [ExportChunkInline]
    actions = [cancel_jobs, rerun_jobs, make_urgent]
    fieldsets = [
        (None, {"fields": ("id", "kind", "partner", "group", "status", "priority", "job_progress", "member_count",
                           "withdrawn_members", "type_counts", "files")}),
        ("Service level", {"fields": ("requested", "deadline", "deadline_state", "took", "started_at", "finished_at",
                                      "expires_at", "last_polled_at")}),
        ("Request", {"fields": ("request_url", "request_id", "transaction_time", "status_link", "params_json")}),
        ("Messages and errors", {"fields": ("messages_json", "planning_messages_json", "error_json")}),
    ]

    @admin.display(description="members", ordering="member_count")
    def members(self, job: ExportJob) -> int:
        return job.member_count

    @admin.display(description="parameters")
    def params_json(self, job: ExportJob) -> str:
        return fhir_json(job.params, "job parameters")

    @admin.display(description="kick-off messages (error file)")
    def messages_json(self, job: ExportJob) -> str:
        return fhir_json(job.messages, f"{len(job.messages)} issue(s)")

    @admin.display(description="planning messages (exclusions)")
    def planning_messages_json(self, job: ExportJob) -> str:
        return fhir_json(job.planning_messages, f"{len(job.planning_messages)} issue(s)")

    @admin.display(description="resources per type")
    def type_counts(self, job: ExportJob) -> str:
        if not job.counts:
            return "–"
        return format_html_join("", "<div>{}: {} ({})</div>", ((name, f"{count:,}", human_bytes(job.sizes.get(name, 0)))
                                                              for name, count in sorted(job.counts.items())))

    @admin.display(description="files")
    def files(self, job: ExportJob) -> str:
        rows = [(reverse("admin:pdex_outputfile_change", args=[f.pk]), f.kind, f.resource_type, f.sequence,
                 f.count, f.size) for f in asyncstatus.job_files(job)]
        if not rows:
            return "–"
        listed = format_html_join("", '<div><a href="{}">{} {} #{}</a>: {} resources, {} bytes</div>', rows)
        return format_html("<details><summary>{} file(s)</summary>{}</details>", len(rows), listed)


@admin.register(PartnerReceipts)
class PartnerReceiptsAdmin(admin.ModelAdmin):
    """What did this partner receive, when, for which members: a page per partner, and its CSV."""

    list_display = ("name", "status", "exports", "resources", "written", "last_export", "csv_link")
    list_filter = ("status",)
    search_fields = ("name", "npi")
    change_form_template = "admin/exports/partner_received.html"

    def get_urls(self):
        return [path("<int:partner_id>/received.csv", self.admin_site.admin_view(self.received_csv),
                     name="exports_partnerreceipts_csv"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        self._totals = received.totals_by_partner()
        return super().changelist_view(request, extra_context)

    def _total(self, partner: Partner) -> received.Totals | None:
        return getattr(self, "_totals", {}).get(partner.pk)

    @admin.display(description="exports")
    def exports(self, partner: Partner) -> int:
        found = self._total(partner)
        return found.jobs if found else 0

    @admin.display(description="resources sent")
    def resources(self, partner: Partner) -> str:
        found = self._total(partner)
        return f"{found.resources:,}" if found else "0"

    @admin.display(description="bytes sent")
    def written(self, partner: Partner) -> str:
        found = self._total(partner)
        return human_bytes(found.bytes) if found else "–"

    @admin.display(description="last export")
    def last_export(self, partner: Partner) -> str:
        found = self._total(partner)
        return seconds(found.last_finished) if found else "–"

    @admin.display(description="CSV")
    def csv_link(self, partner: Partner) -> str:
        return format_html('<a href="{}">members received</a>',
                           reverse("admin:exports_partnerreceipts_csv", args=[partner.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        partner = Partner.objects.filter(pk=object_id).first()
        if partner is None or not self.has_view_permission(request):
            raise PermissionDenied
        deliveries = received.deliveries(partner)
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "title": f"What {partner.name} received",
            "partner": partner, "deliveries": deliveries, "members": received.members_sample(partner),
            "member_columns": received.RECEIVED_COLUMNS, "human_bytes": human_bytes,
            "totals": {"exports": len(deliveries), "members": sum(d.members for d in deliveries),
                       "resources": sum(d.resources for d in deliveries),
                       "bytes": human_bytes(sum(d.bytes for d in deliveries)),
                       "downloads": sum(d.downloads for d in deliveries)},
            "csv_url": reverse("admin:exports_partnerreceipts_csv", args=[partner.pk]),
            "partner_url": reverse("admin:pdex_partner_change", args=[partner.pk]),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_form_template, context)

    def received_csv(self, request, partner_id: int):
        partner = Partner.objects.filter(pk=partner_id).first()
        if partner is None or not self.has_view_permission(request):
            raise PermissionDenied
        audit.record("admin-received-csv", audit.SUCCESS, partner=partner, reason=f"downloaded by {request.user}",
                     request=request)
        rows = ((str(row[0]), row[1], _iso(row[2]), _iso(row[3]), *row[4:]) for row in received.received_rows(partner))
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return streaming_csv(f"received-partner{partner.pk}-{stamp}.csv", received.RECEIVED_COLUMNS, rows)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _iso(moment) -> str:
    return moment.isoformat() if moment else ""


@register
def export_panels(request) -> list[Panel]:
    totals = received.totals_by_partner()
    names = dict(Partner.objects.filter(pk__in=totals).values_list("pk", "name"))
    top = sorted(totals.values(), key=lambda t: t.resources, reverse=True)[:10]
    return [
        Panel("Resources sent per partner", charts.horizontal_bars(
            [(names.get(t.partner_id, "?"), t.resources, f"{t.resources:,}") for t in top],
            title="resources sent per partner"), note="resources written by exports, all time", order=40),
        Panel("Bytes sent per partner", charts.horizontal_bars(
            [(names.get(t.partner_id, "?"), t.bytes, human_bytes(t.bytes)) for t in top],
            title="bytes sent per partner", bar_colour="#56B4E9"), note="NDJSON written by exports, all time",
            order=41),
    ]
