"""Django's admin site with a dashboard on its index page, and the registry of the dashboard's panels.

The admin stays plain Django: every app registers its ModelAdmins on `admin.site` as usual, and adds its
dashboard panels with `register` from its admin module (pdex/admin/dashboard.py draws the shared ones).
This module imports no admin module, so Django can build the site before autodiscovery fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import admin
from django.http import HttpRequest
from django.utils.safestring import SafeString


@dataclass(frozen=True)
class Panel:
    title: str
    body: SafeString
    note: str = ""
    order: int = 50
    wide: bool = False


PanelSource = Callable[[HttpRequest], list[Panel]]
_sources: list[PanelSource] = []


def register(source: PanelSource) -> PanelSource:
    """Add a function that returns panels (an app's admin module calls this; usable as a decorator)."""
    if source not in _sources:
        _sources.append(source)
    return source


def panels(request: HttpRequest) -> list[Panel]:
    found = [panel for source in _sources for panel in source(request)]
    return sorted(found, key=lambda panel: panel.order)


class PdexAdminSite(admin.AdminSite):
    """Django's admin site with the dashboard on its index page."""

    site_header = "Payer-to-payer exchange — operations"
    site_title = "pdex-p2p admin"
    index_title = "Dashboard"
    index_template = "admin/pdex_index.html"
    # "View site": what partners see of us, the FHIR API's CapabilityStatement (there is no web site).
    site_url = "/fhir/metadata"
    # The list columns that matter fit at 1440 px only without the model sidebar beside every list (the
    # dashboard and the breadcrumbs lead everywhere it did).
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        return super().index(request, {**(extra_context or {}), "dashboard": panels(request)})
