"""`Group/{id}/$export` (Bulk Data 2.0.0 group export), the generic sibling of $davinci-data-export.

The same Groups are exportable and the same P2P rules apply; exportType is not a parameter here.
"""

from __future__ import annotations

from exports.models import ExportJob
from exports.operations.davinci_data_export import GroupKickOffView
from exports.params import EXPORT


class GroupExportView(GroupKickOffView):
    kind = ExportJob.Kind.GROUP
    operation = EXPORT
