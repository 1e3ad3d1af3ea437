"""`python -m pdex.metrics.reset`: empty PROMETHEUS_MULTIPROC_DIR before the web processes start.

The web's counters live in one file per process there; files of processes from an earlier start would
otherwise be summed into this one's and pile up. Run once per start, before gunicorn forks (`make run` does;
docker-compose's web command does the same; a gunicorn config's `on_starting` hook may call `reset()`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from django.conf import settings


def reset() -> Path:
    settings.VAR_DIR  # noqa: B018 - loading the settings sets the directory's default (config/settings.py)
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    reset()
