"""`Group/{id}/$davinci-data-export` (ATR operation, PDex payer-to-payer profile of it; spec §5).

Only the caller's own `match` Groups are exportable (§5.7 rule 5); another partner's Group is 404.
"""

from __future__ import annotations

from exports.access import GROUP_EXPORT_SCOPES
from exports.models import ExportJob
from exports.operations.kickoff import accepted, kick_off
from exports.params import DAVINCI
from matching.models import MemberMatchGroup
from matching.selectors import owned_group
from pdex.fhir import BadRequest, FhirView


def exportable_group(*, partner, group_id: str) -> MemberMatchGroup:
    """The caller's Group, if it is a MatchedMembers Group; 404 when not theirs, 400 for no-match/constrained."""
    group = owned_group(partner=partner, group_id=group_id)
    if group.code != MemberMatchGroup.Code.MATCH:
        raise BadRequest(f"Group/{group_id} lists {group.code} members; only the matched-members Group "
                         "(code=match) can be exported.", code="business-rule")
    return group


class GroupKickOffView(FhirView):
    """Kick-off of an export of one of the caller's match Groups; subclasses name the operation."""

    required_scopes = GROUP_EXPORT_SCOPES
    audit_action, audit_entity = "export", "Group/{group_id}"
    kind: str
    operation: str

    def post(self, request, group_id: str):
        group = exportable_group(partner=request.partner, group_id=group_id)
        return accepted(kick_off(request, kind=self.kind, operation=self.operation, group=group), request)

    get = post


class DavinciDataExportView(GroupKickOffView):
    kind = ExportJob.Kind.DAVINCI
    operation = DAVINCI
