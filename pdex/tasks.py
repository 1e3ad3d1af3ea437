"""Celery tasks of the pdex app (autodiscovered as `pdex.tasks`): housekeeping of auth and of job outputs."""

from celery import shared_task
from oauth2_provider.models import clear_expired

from pdex.jobs.tasks import *  # noqa: F403
from pdex.write import bulkimport
from pdex.write.kind import IMPORT

__all__ = ["clear_expired_tokens", "expire_outputs", "finish_import", "plan_import", "run_import_file",  # noqa: F405
           "sweep_stale_work"]


@shared_task(name="pdex.clear_expired_tokens", acks_late=True)
def clear_expired_tokens() -> None:
    """Delete expired access tokens (5-minute tokens pile up fast); idempotent."""
    clear_expired()


@shared_task(name=IMPORT.plan_task, acks_late=True)
def plan_import(job_id: str) -> int:
    """Start a bulk import's files (pdex.write.bulkimport)."""
    return bulkimport.plan(job_id)


@shared_task(name=IMPORT.run_task, bind=True, acks_late=True)
def run_import_file(self, unit_id: int | None = None) -> str:
    """Load whichever input file is due."""
    return bulkimport.run_file(unit_id, worker=self.request.hostname or "").state


@shared_task(name=IMPORT.finish_task, acks_late=True)
def finish_import(job_id: str) -> bool:
    return bulkimport.finish(job_id)
