"""`GET|POST /fhir/$export` (Bulk Data 2.0.0 system-level export): everything this partner may receive now.

That is the members of the partner's own match Groups whose consent can be complied with now (re-checked at
planning, as for a Group), under the same payer-to-payer rules as the Group export. It reaches no member the
partner could not already export Group by Group: docs/exports.md, "System-level $export".
"""

from __future__ import annotations

from exports.access import OPERATION_SCOPES
from exports.models import ExportJob
from exports.operations.kickoff import accepted, kick_off
from exports.params import SYSTEM
from pdex.fhir import FhirView


class SystemExportView(FhirView):
    required_scopes = OPERATION_SCOPES[ExportJob.Kind.SYSTEM]
    audit_action, audit_entity = "export", "$export"

    def post(self, request):
        return accepted(kick_off(request, kind=ExportJob.Kind.SYSTEM, operation=SYSTEM), request)

    get = post
