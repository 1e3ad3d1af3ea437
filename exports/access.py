"""What a token must carry for an export: at kick-off, at the status URL and for each file (Bulk Data 2.0.0).

"Bulk Data Status Request and Bulk Data Output File Requests with requiresAccessToken=true SHALL be protected
the same way the Bulk Data Kick-off Request, including an access token with scopes that cover all resources
being exported" (export.md, Security Considerations). So the status URL asks for the kick-off's scopes
(the operation's and one per exported type), and a file also for its own type: a token with only the
member-match scope, or one narrowed to `system/Observation.rs`, reads no Patient file.
"""

from __future__ import annotations

from collections.abc import Iterable

from exports import rules
from exports.models import ExportJob
from pdex.auth import scopes
from pdex.jobs.kinds import Requirements
from pdex.jobs.models import OutputFile

GROUP_EXPORT_SCOPES: Requirements = (("system/Group.rs", scopes.MATCH_GROUP_EXPORT),)
# The operation's own scope, per kind of export (the types' scopes come on top).
OPERATION_SCOPES: dict[str, Requirements] = {
    ExportJob.Kind.DAVINCI: GROUP_EXPORT_SCOPES,
    ExportJob.Kind.GROUP: GROUP_EXPORT_SCOPES,
    ExportJob.Kind.PATIENT: ("system/Patient.rs",),
    # Everything from the partner's match Groups: the same operation scope as exporting one of them.
    ExportJob.Kind.SYSTEM: GROUP_EXPORT_SCOPES,
    ExportJob.Kind.EVERYTHING: ("system/Patient.r",),
}


def type_scopes(types: Iterable[str]) -> Requirements:
    """`system/<Type>.rs` for each type (a wildcard scope covers them all)."""
    return tuple(f"system/{resource_type}.rs" for resource_type in types)


def missing_type_scopes(granted: Iterable[str], types: Iterable[str]) -> list[str]:
    granted = list(granted)
    return [t for t in types if not scopes.satisfies(granted, f"system/{t}.rs")]


def job_scopes(job: ExportJob, output: OutputFile | None = None) -> Requirements:
    """The kick-off's scopes (the operation's, and every type the job exports); a data file's own type too."""
    types = tuple(job.params.get("types") or ()) or rules.EXPORT_TYPES
    needed = OPERATION_SCOPES.get(job.kind, ()) + type_scopes(types)
    if output is not None and output.kind == OutputFile.Kind.OUTPUT:
        needed += type_scopes([output.resource_type])
    return needed
