"""`Patient/$export` (Bulk Data 2.0.0): every member the caller has matched and still holds consent for.

The members are the partner's consented members, re-checked at execution time like any export; the
`patient` parameter narrows them further (spec §6 item 3).
"""

from __future__ import annotations

from exports.access import OPERATION_SCOPES
from exports.models import ExportJob
from exports.operations.kickoff import accepted, kick_off
from exports.params import EXPORT
from pdex.fhir import FhirView


class PatientExportView(FhirView):
    required_scopes = OPERATION_SCOPES[ExportJob.Kind.PATIENT]
    audit_action, audit_entity = "export", "Patient"

    def post(self, request):
        return accepted(kick_off(request, kind=ExportJob.Kind.PATIENT, operation=EXPORT), request)

    get = post
