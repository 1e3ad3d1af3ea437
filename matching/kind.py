"""Bulk member match as a kind of job of the engine (pdex.jobs.engine): its models, tasks and reporting."""

from pdex.jobs.kinds import JobKind

MATCH = JobKind(
    job_model="matching.MatchJob", unit_model="matching.MatchBatch", progress_unit="members",
    plan_task="matching.start_match_job", run_task="matching.match_batch", finish_task="matching.finish_match_job",
    audit_action="bulk-member-match", title="bulk member match",
)
