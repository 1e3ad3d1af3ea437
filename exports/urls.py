"""Routes of the exports app under /fhir/ (status, files; the operations' kick-off routes follow)."""

from django.urls import path

from exports import status_views

urlpatterns = [
    path("bulkstatus/<uuid:job_id>", status_views.BulkStatusView.as_view(), name="bulk-status"),
    path("bulkfiles/<uuid:file_id>", status_views.BulkFileView.as_view(), name="bulk-file"),
    path("bulkfiles/<uuid:file_id>/signed", status_views.SignedBulkFileView.as_view(), name="bulk-file-signed"),
]
