"""The export as a kind of job of the engine (pdex.jobs.engine): its models, its tasks, how it is reported."""

from pdex.jobs.kinds import JobKind

EXPORT = JobKind(
    job_model="exports.ExportJob", unit_model="exports.ExportChunk", progress_unit="chunks",
    plan_task="exports.plan_export", run_task="exports.run_chunk", finish_task="exports.finalize_export",
    audit_action="export-complete", title="export", access_scopes="exports.access.job_scopes",
    download_check="exports.withdrawal.check_download",
)
