"""Routes of the asynchronous request pattern under /fhir/: status and files, whatever the job's kind."""

from django.urls import path

from pdex.jobs import views

urlpatterns = [
    path("bulkstatus/<uuid:job_id>", views.BulkStatusView.as_view(), name="bulk-status"),
    path("bulkfiles/<uuid:file_id>", views.BulkFileView.as_view(), name="bulk-file"),
    path("bulkfiles/<uuid:file_id>/signed", views.SignedBulkFileView.as_view(), name="bulk-file-signed"),
]
