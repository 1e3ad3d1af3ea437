"""FHIR reads, searches and $everything over the member data store (mounted last under /fhir/).

Only the types we serve are routed, so any other path stays an unknown URL (404), not a 401.
"""

from django.urls import path, re_path

from exports.retrieval import capability  # noqa: F401 - registers these interactions in the CapabilityStatement
from exports.retrieval.search import SEARCHABLE_TYPES
from exports.retrieval.views import EverythingView, SearchView, read_any
from pdex.auth.scopes import R4_RESOURCE_TYPES
from pdex.write.views import ResourceWriteView, by_method

SEARCH_TYPE = rf"(?P<resource_type>{'|'.join(SEARCHABLE_TYPES)})"
# Reads of the types we serve (and Binary), writes by our own systems of any R4 type (pdex.write).
ANY_TYPE = rf"(?P<resource_type>{'|'.join(sorted(R4_RESOURCE_TYPES))})"
ID = r"(?P<fhir_id>[A-Za-z0-9\-.]{1,64})"

urlpatterns = [
    path("Patient/<str:patient_id>/$everything", EverythingView.as_view(), name="patient-everything"),
    re_path(rf"^{SEARCH_TYPE}$", SearchView.as_view(), name="resource-search"),
    re_path(rf"^{ANY_TYPE}/{ID}$", by_method(get=read_any, put=ResourceWriteView.as_view(),
                                             delete=ResourceWriteView.as_view()), name="resource-read"),
]
