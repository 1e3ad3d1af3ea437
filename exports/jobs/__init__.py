"""The export job on the shared job engine (pdex.jobs.engine), one concern a module:

- `start`: kick-off — record the job with its typed parameters, under the per-partner limit;
- `plan`: re-check consent, split the members into chunks;
- `run`: claim, write and record chunks;
- `finalize`: shared resources, error file, completed; re-run and failure.

What an export is to the engine (models, tasks) is `exports.kind.EXPORT`. The names below are what views,
tasks and admin call.
"""

from exports.jobs.finalize import fail, finalize, rerun, write_error_file
from exports.jobs.plan import job_params, plan
from exports.jobs.run import LeaseLost, finish_chunk, heartbeat, lease, run_chunk
from exports.jobs.start import start_export

__all__ = ["LeaseLost", "fail", "finalize", "finish_chunk", "heartbeat", "job_params", "lease", "plan", "rerun",
           "run_chunk", "start_export", "write_error_file"]
