"""FHIR reads, searches and $everything over the member data store (mounted last under /fhir/).

Only the types we serve are routed, so any other path stays an unknown URL (404), not a 401.
"""

from django.urls import path, re_path

from exports.retrieval import capability  # noqa: F401 - registers these interactions in the CapabilityStatement
from exports.retrieval.search import SEARCHABLE_TYPES
from exports.retrieval.views import EverythingView, ReadView, SearchView
from exports.rules import EXPORT_TYPES

SEARCH_TYPE = rf"(?P<resource_type>{'|'.join(SEARCHABLE_TYPES)})"
READ_TYPE = rf"(?P<resource_type>{'|'.join(EXPORT_TYPES)})"
ID = r"(?P<fhir_id>[A-Za-z0-9\-.]{1,64})"

urlpatterns = [
    path("Patient/<str:patient_id>/$everything", EverythingView.as_view(), name="patient-everything"),
    re_path(rf"^{SEARCH_TYPE}$", SearchView.as_view(), name="resource-search"),
    re_path(rf"^{READ_TYPE}/{ID}$", ReadView.as_view(), name="resource-read"),
]
