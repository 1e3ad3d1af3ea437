from django.apps import AppConfig

from pdex import capability
from pdex.auth.discovery import capability_security


class PdexConfig(AppConfig):
    name = "pdex"
    verbose_name = "FHIR edge, partners and member data"

    def ready(self) -> None:
        capability.register_security(capability_security)
