from django.contrib import admin
from django.urls import include, path

from pdex import views
from pdex.metrics.scrape import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("fhir/metadata", views.MetadataView.as_view(), name="fhir-metadata"),
    path("", include("pdex.urls")),
    path("", include("pdex.write.urls")),
    path("", include("requesting.urls")),
    path("fhir/", include("pdex.jobs.urls")),
    path("fhir/", include("consent.urls")),
    path("fhir/", include("matching.urls")),
    path("fhir/", include("exports.urls")),
]
