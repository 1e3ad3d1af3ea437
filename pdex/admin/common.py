"""What the admin pages share: FHIR JSON pretty-printed and collapsible, streamed CSV, short ids, read-only."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

CSV_BATCH = 2000


def fhir_json(value: Any, summary: str = "", *, open_: bool = False) -> str:
    """A FHIR record (Group, Consent, Parameters, OperationOutcome…) indented, in a <details> to fold it."""
    if value in (None, "", [], {}):
        return "–"
    text = json.dumps(value, indent=2, ensure_ascii=False)
    label = summary or _summary(value)
    return format_html('<details class="pdex-json"{}><summary>{} <small>({} lines)</small></summary>'
                       '<pre style="white-space: pre-wrap; max-width: 110em; max-height: 40em; overflow: auto">{}'
                       "</pre></details>", " open" if open_ else "", label, text.count("\n") + 1, text)


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("resourceType")
        if kind == "OperationOutcome":
            issue = (value.get("issue") or [{}])[0]
            return f"OperationOutcome: {issue.get('code', '')} — {str(issue.get('diagnostics', ''))[:120]}"
        if kind:
            return f"{kind}/{value.get('id', '')}" if value.get("id") else kind
        return f"{len(value)} field(s)"
    if isinstance(value, list):
        return f"{len(value)} item(s)"
    return str(value)[:80]


def short_id(value: Any) -> str:
    """A UUID's first 8 characters (the whole id is on the record's page and in search)."""
    return str(value)[:8]


def seconds(moment) -> str:
    """A time to the second, in the admin's time zone."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


class _Echo:
    """csv.writer writes into this and gets the line back, so rows stream one at a time (Django's pattern)."""

    def write(self, value: str) -> str:
        return value


def streaming_csv(filename: str, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> StreamingHttpResponse:
    """A CSV download written row by row as it is read, so its size never sits in memory."""
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(list(header))
        for row in rows:
            yield writer.writerow(["" if cell is None else cell for cell in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class CsvExportMixin:
    """A "Download CSV" button on the change list: what the current filters and search show, streamed.

    `csv_columns` lists (header, attribute name or callable(obj)).
    """

    csv_columns: tuple[tuple[str, str | Callable[[Any], Any]], ...] = ()
    change_list_template = "admin/pdex/csv_change_list.html"

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [path("export.csv", self.admin_site.admin_view(self.export_csv), name="{}_{}_csv".format(*info)),
                *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> StreamingHttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset = self.get_changelist_instance(request).get_queryset(request)
        getters = [getter if callable(getter) else _attribute(getter) for _, getter in self.csv_columns]
        rows = ([getter(obj) for getter in getters] for obj in queryset.iterator(chunk_size=CSV_BATCH))
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return streaming_csv(f"{self.opts.model_name}-{stamp}.csv", [name for name, _ in self.csv_columns], rows)


def _attribute(name: str) -> Callable[[Any], Any]:
    def get(obj: Any) -> Any:
        value = obj
        for part in name.split("__"):
            value = getattr(value, part, None) if value is not None else None
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        return value.isoformat() if hasattr(value, "isoformat") else value

    return get
