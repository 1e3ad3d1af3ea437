"""Routes of the exports app under /fhir/ (status, files; the operations' kick-off routes follow)."""

from django.urls import path

from exports import status_views
from exports.operations import davinci_data_export, group_export, patient_export

urlpatterns = [
    path("bulkstatus/<uuid:job_id>", status_views.BulkStatusView.as_view(), name="bulk-status"),
    path("bulkfiles/<uuid:file_id>", status_views.BulkFileView.as_view(), name="bulk-file"),
    path("bulkfiles/<uuid:file_id>/signed", status_views.SignedBulkFileView.as_view(), name="bulk-file-signed"),
    path("Group/<str:group_id>/$davinci-data-export", davinci_data_export.DavinciDataExportView.as_view(),
         name="davinci-data-export"),
    path("Group/<str:group_id>/$export", group_export.GroupExportView.as_view(), name="group-export"),
    path("Patient/$export", patient_export.PatientExportView.as_view(), name="patient-export"),
]
