"""Bulk member match as a kind of job of the engine (pdex.jobs.engine): its models, tasks and reporting."""

from pdex.auth import scopes
from pdex.jobs.kinds import JobKind, Requirements


def match_job_scopes(job, output=None) -> Requirements:
    """A bulk member match's status and its Group files need the scope its kick-off needed."""
    return (scopes.BULK_MEMBER_MATCH,)


MATCH = JobKind(
    job_model="matching.MatchJob", unit_model="matching.MatchBatch", progress_unit="members",
    plan_task="matching.start_match_job", run_task="matching.match_batch", finish_task="matching.finish_match_job",
    audit_action="bulk-member-match", title="bulk member match", access_scopes="matching.kind.match_job_scopes",
    purge_expired="matching.jobs.purge_expired_inputs",
)
