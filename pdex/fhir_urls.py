"""FHIR reads, searches and $everything over the member data store (mounted last under /fhir/)."""

from django.urls import path, re_path

from pdex import capability_resources  # noqa: F401 - registers these interactions in the CapabilityStatement
from pdex.resource_views import EverythingView, ReadView, SearchView

TYPE = r"(?P<resource_type>[A-Z][A-Za-z]+)"
ID = r"(?P<fhir_id>[A-Za-z0-9\-.]{1,64})"

urlpatterns = [
    path("Patient/<str:patient_id>/$everything", EverythingView.as_view(), name="patient-everything"),
    re_path(rf"^{TYPE}$", SearchView.as_view(), name="resource-search"),
    re_path(rf"^{TYPE}/{ID}$", ReadView.as_view(), name="resource-read"),
]
