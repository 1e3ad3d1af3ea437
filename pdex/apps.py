from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps

from pdex import capability
from pdex.auth.discovery import capability_security


class PdexConfig(AppConfig):
    name = "pdex"
    verbose_name = "FHIR edge, partners and member data"

    def ready(self) -> None:
        capability.register_security(capability_security)


class PdexAdminConfig(admin_apps.AdminConfig):
    """Django's admin with our site class: the same admin, a dashboard on its index (pdex.adminsite)."""

    default = False
    default_site = "pdex.adminsite.PdexAdminSite"
