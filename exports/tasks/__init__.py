"""Celery tasks of the exports app (autodiscovered as `exports.tasks`): thin wrappers over exports.jobs."""

from exports.tasks.export import *  # noqa: F403
