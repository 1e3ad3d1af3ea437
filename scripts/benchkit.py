"""What the benchmarks share: each runs in a fresh database of its own, never the one the tests or demo use, and
starts its services (gunicorn, Celery workers) as children of its own process, measurable with psutil."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recreate_database(name: str) -> None:
    """Drop and create database `name` on the configured server, and point Django at it (before setup)."""
    from django.conf import settings

    from config.embedded import recreate_database as recreate

    db = settings.DATABASES["default"]
    recreate(db, name)
    db["NAME"] = name


def bench_database(suffix: str) -> str:
    """A database name of this benchmark's own, after the configured one (`pdex_perf` → `pdex_perf_bench_match`),
    so two checkouts sharing one PostgreSQL never drop each other's."""
    from django.conf import settings

    return f"{settings.DATABASES['default']['NAME']}_bench_{suffix}"


def database_url() -> str:
    """The benchmark database's URL, for worker subprocesses."""
    from django.db import connection

    from config.embedded import settings_database_url

    return settings_database_url(connection.settings_dict)


class Process:
    """A service subprocess (its log in a temporary file) whose processes' memory is sampled while it runs."""

    def __init__(self, command: list[str], env: dict[str, str], name: str):
        self.name = name
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.peaks: dict[int, int] = {}  # pid → peak RSS
        self._sampling = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_for(self, text: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while text not in Path(self.log.name).read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text()[-3000:])
            time.sleep(0.2)

    def sizes(self) -> dict[int, int]:
        """RSS of the process and each of its children, by pid."""
        import psutil

        try:
            procs = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        sizes = {}
        for proc in procs:
            try:
                sizes[proc.pid] = proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return sizes

    def start_sampling(self, every: float = 0.02) -> None:
        """Sample every process's RSS in a thread until `stop_sampling` (peaks per pid in `peaks`)."""
        self.peaks = {}
        self._sampling.set()

        def sample() -> None:
            while self._sampling.is_set():
                for pid, size in self.sizes().items():
                    self.peaks[pid] = max(self.peaks.get(pid, 0), size)
                time.sleep(every)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> dict[int, int]:
        self._sampling.clear()
        if self._thread is not None:
            self._thread.join()
        return dict(self.peaks)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
