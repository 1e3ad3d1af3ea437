"""Celery queues by kind of work, so no kind waits behind another (docs/architecture.md, "Jobs").

- maintenance: the recovery sweep, output expiry, token cleanup — small, periodic, must run on time;
- control: planning and finishing jobs (one message per job);
- export: export chunks; match: bulk-member-match batches (one message per unit of work);
- pull: the requesting side's steps (our match and export at another payer, each file's download and ingest).

Every name carries a prefix (CELERY_QUEUE, default "pdex"), so several deployments or test runs can share
one Redis without taking each other's tasks.
"""

from __future__ import annotations

KINDS = ("maintenance", "control", "export", "match", "pull")

# Task name → kind of queue; anything not listed goes to `control`.
TASK_KINDS = {
    "pdex.sweep_stale_work": "maintenance",
    "pdex.expire_outputs": "maintenance",
    "pdex.clear_expired_tokens": "maintenance",
    "exports.withdraw_ended": "maintenance",
    "exports.run_chunk": "export",
    "matching.match_batch": "match",
    "requesting.run_pull_unit": "pull",
    "pdex.run_import_file": "pull",  # our own systems' bulk import: ingest, like a pull's files
    "requesting.schedule_pulls": "maintenance",
    "requesting.advance_signing_keys": "maintenance",
}


def names(prefix: str) -> dict[str, str]:
    """kind → queue name, e.g. {"export": "pdex.export", …}."""
    return {kind: f"{prefix}.{kind}" for kind in KINDS}


def routes(prefix: str) -> dict[str, dict[str, str]]:
    """CELERY_TASK_ROUTES for this prefix."""
    queues = names(prefix)
    return {task: {"queue": queues[kind]} for task, kind in TASK_KINDS.items()}


def worker_queues(prefix: str, kinds: str = "") -> str:
    """The -Q argument of a worker: the named kinds (comma-separated), or all of them."""
    wanted = [k.strip() for k in kinds.split(",") if k.strip()] or list(KINDS)
    unknown = set(wanted) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown queue kinds {sorted(unknown)}; expected some of {', '.join(KINDS)}")
    return ",".join(names(prefix)[kind] for kind in wanted)


if __name__ == "__main__":  # `python -m config.queues export,match` prints the -Q value for the Procfile
    import os
    import sys

    print(worker_queues(os.environ.get("CELERY_QUEUE", "pdex"), sys.argv[1] if len(sys.argv) > 1 else ""))
