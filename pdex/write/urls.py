"""`POST /fhir` (site-root mounted): transaction and batch Bundles from our own systems. PUT and DELETE of
`/fhir/{Type}/{id}` share their URL with the read (exports.retrieval.urls routes them here by method)."""

from django.urls import path

from pdex.write.views import BundleView, ImportKickoffView, ImportStatusView

urlpatterns = [
    path("fhir/$import", ImportKickoffView.as_view(), name="bulk-import"),
    path("fhir/$import-status/<uuid:job_id>", ImportStatusView.as_view(), name="bulk-import-status"),
    path("fhir", BundleView.as_view(), name="fhir-bundle"),
    path("fhir/", BundleView.as_view(), name="fhir-bundle-slash"),
]
