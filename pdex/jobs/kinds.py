"""The kinds of asynchronous job the service runs, registered by their apps (AppConfig.ready()).

The status URL (pdex.jobs.asyncstatus) and the job engine (pdex.jobs.engine) serve every registered kind,
so the ground floor never imports the apps that build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.utils.module_loading import import_string

if TYPE_CHECKING:  # kinds are declared before the app registry is ready: no model import at run time
    from pdex.jobs.models import AsyncJob, JobState, OutputFile, WorkUnit

# What a token must carry, as FhirView.required_scopes: each item a scope, or a tuple of alternatives.
Requirements = tuple[Any, ...]


@dataclass(frozen=True)
class JobKind:
    """One kind of asynchronous job: its models (by label), its tasks (by name) and how it is reported."""

    job_model: str  # e.g. "exports.ExportJob"
    unit_model: str  # e.g. "exports.ExportChunk"; its `job` foreign key points at job_model
    progress_unit: str  # what X-Progress counts: "chunks", "members"
    plan_task: str
    run_task: str
    finish_task: str
    audit_action: str  # the audit action of the job's end
    title: str  # what an OperationOutcome calls it: "export", "bulk member match"
    # Dotted path of `f(job, output_file_or_None) -> Requirements`: the scopes the status URL (None) and each file
    # ask of the token. Bulk Data: status and files "SHALL be protected the same way the Bulk Data Kick-off
    # Request, including an access token with scopes that cover all resources being exported".
    access_scopes: str = ""
    # Dotted path of `f(job, output_file) -> None`, called before a file is served: it raises (a FhirError) when
    # the file may no longer go out (exports: a member in it whose consent has ended since it was written).
    download_check: str = ""
    # A partner's asynchronous request (an AsyncJob, served at the status URL); False for the jobs we run for
    # ourselves (JobState without a partner: the requesting side's pulls), which the engine runs all the same.
    partner_facing: bool = True
    # Dotted path of `f(now) -> int`: deletes what the kind keeps of a partner's request once its job expired or
    # was cancelled (run with output expiry, pdex.jobs.asyncstatus.expire_outputs); the jobs purged.
    purge_expired: str = ""

    def required_scopes(self, job: AsyncJob, output: OutputFile | None = None) -> Requirements:
        if not self.access_scopes:
            return ()
        rule: Callable[..., Requirements] = import_string(self.access_scopes)
        return rule(job, output)

    def check_download(self, job: AsyncJob, output: OutputFile) -> None:
        if self.download_check:
            import_string(self.download_check)(job, output)

    @property
    def jobs(self) -> type[AsyncJob] | type[JobState]:
        return apps.get_model(self.job_model)

    @property
    def units(self) -> type[WorkUnit]:
        return apps.get_model(self.unit_model)


_kinds: dict[str, JobKind] = {}


def register(kind: JobKind) -> None:
    _kinds[kind.job_model] = kind


def kinds() -> list[JobKind]:
    return list(_kinds.values())


def partner_facing_kinds() -> list[JobKind]:
    """The kinds whose jobs the status URL serves to the partners that started them."""
    return [kind for kind in _kinds.values() if kind.partner_facing]


def kind_of(job: AsyncJob | type[AsyncJob]) -> JobKind:
    return _kinds[job._meta.label]
