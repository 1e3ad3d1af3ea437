"""Celery tasks of the exports app (autodiscovered as `exports.tasks`): thin wrappers, one module a concern."""

from exports.tasks.export import *  # noqa: F403
from exports.tasks.maintenance import *  # noqa: F403
