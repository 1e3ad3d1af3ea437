from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps

from pdex import capability, lookups  # noqa: F401 - lookups registers `__any` on every field
from pdex.auth.discovery import capability_security
from pdex.jobs import kinds
from pdex.write.kind import IMPORT


class PdexConfig(AppConfig):
    name = "pdex"
    verbose_name = "FHIR edge, partners and member data"

    def ready(self) -> None:
        capability.register_security(capability_security)
        kinds.register(IMPORT)  # our own systems' bulk import runs on the job engine (never at the status URL)


class PdexAdminConfig(admin_apps.AdminConfig):
    """Django's admin with our site class: the same admin, a dashboard on its index (pdex.adminsite)."""

    default = False
    default_site = "pdex.adminsite.PdexAdminSite"
