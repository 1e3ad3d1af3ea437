"""`POST /fhir` (site-root mounted): transaction and batch Bundles from our own systems. PUT and DELETE of
`/fhir/{Type}/{id}` share their URL with the read (exports.retrieval.urls routes them here by method)."""

from django.urls import path

from pdex.write.views import BundleView

urlpatterns = [
    path("fhir", BundleView.as_view(), name="fhir-bundle"),
    path("fhir/", BundleView.as_view(), name="fhir-bundle-slash"),
]
