"""`Group/{id}/$export` (Bulk Data 2.0.0 group export), the generic sibling of $davinci-data-export.

The same Groups are exportable and the same P2P rules apply; exportType is not a parameter here.
"""

from __future__ import annotations

from exports.models import ExportJob
from exports.operations.davinci_data_export import GROUP_EXPORT_SCOPES, exportable_group
from exports.operations.kickoff import accepted, audited, kick_off
from exports.params import EXPORT
from pdex.fhir import FhirView


class GroupExportView(FhirView):
    required_scopes = GROUP_EXPORT_SCOPES

    def post(self, request, group_id: str):
        with audited(request, f"Group/{group_id}"):
            group = exportable_group(partner=request.partner, group_id=group_id)
            job = kick_off(request, kind=ExportJob.Kind.GROUP, operation=EXPORT, group=group)
        return accepted(job)

    get = post
