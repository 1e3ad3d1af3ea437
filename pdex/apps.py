from django.apps import AppConfig


class PdexConfig(AppConfig):
    name = "pdex"
    verbose_name = "FHIR edge, partners and member data"
