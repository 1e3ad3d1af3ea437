"""Routes of the exports app under /fhir/: the export kick-offs, then single-member retrieval (mounted last,
so a path no type claims stays an unknown URL)."""

from django.urls import include, path

from exports.operations import davinci_data_export, group_export, patient_export, system_export

urlpatterns = [
    path("$export", system_export.SystemExportView.as_view(), name="system-export"),
    path("Group/<str:group_id>/$davinci-data-export", davinci_data_export.DavinciDataExportView.as_view(),
         name="davinci-data-export"),
    path("Group/<str:group_id>/$export", group_export.GroupExportView.as_view(), name="group-export"),
    path("Patient/$export", patient_export.PatientExportView.as_view(), name="patient-export"),
    path("", include("exports.retrieval.urls")),
]
