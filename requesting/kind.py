"""A pull from a previous payer as a kind of job of the engine (pdex.jobs.engine): its models, tasks, reporting.

Not partner-facing: no partner polls it at our status URL; our staff follow it in admin and `p2p_pull`.
"""

from pdex.jobs.kinds import JobKind

PULL = JobKind(
    job_model="requesting.PullJob", unit_model="requesting.PullUnit", progress_unit="steps",
    plan_task="requesting.start_pull", run_task="requesting.run_pull_unit", finish_task="requesting.advance_pull",
    audit_action="p2p-pull", title="pull from a previous payer", partner_facing=False,
)
