"""Our own systems' bulk import as a kind of job of the engine (pdex.jobs.engine): models, tasks, reporting.

Not partner-facing: its internal client polls `$import-status/{id}` (pdex.write.bulkimport), never the
partners' status URL.
"""

from pdex.jobs.kinds import JobKind

IMPORT = JobKind(
    job_model="pdex.ImportJob", unit_model="pdex.ImportFile", progress_unit="files",
    plan_task="pdex.plan_import", run_task="pdex.run_import_file", finish_task="pdex.finish_import",
    audit_action="bulk-import", title="bulk import", partner_facing=False,
)
