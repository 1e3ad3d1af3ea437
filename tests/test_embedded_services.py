"""On a machine with nothing on the standard ports, the project starts private PostgreSQL and Redis."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent


def run_embedded(command: str, var_dir: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    # Port 1 answers nothing: the code must take the "fresh machine" path.
    env.update({"PDEX_VAR_DIR": var_dir, "PDEX_LOCAL_PG_PORT": "1", "PDEX_LOCAL_REDIS_PORT": "1"})
    result = subprocess.run([sys.executable, "-m", "config.embedded", command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def test_private_postgres_and_redis_start_under_var_and_stop():
    var_dir = tempfile.mkdtemp(prefix="pdex-var-", dir="/tmp")
    os.chmod(var_dir, 0o755)  # noqa: S103 - the private PostgreSQL runs as its own system user under root
    urls = dict(line.split("=", 1) for line in run_embedded("env", var_dir).split())
    try:
        assert urls["DATABASE_URL"].startswith("postgres://postgres@/pdex?host=")
        assert urls["REDIS_URL"].startswith("unix://")
        host = urls["DATABASE_URL"].split("host=")[1]
        with psycopg.connect(dbname="pdex", user="postgres", host=host) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "pdex"
        client = redis.Redis.from_url(urls["REDIS_URL"])
        assert client.ping()
        client.close()
        # A second process reuses the running servers instead of starting new ones.
        assert dict(line.split("=", 1) for line in run_embedded("env", var_dir).split()) == urls
    finally:
        run_embedded("stop", var_dir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (Path(host) / "postmaster.pid").exists():
        time.sleep(0.2)
    assert not (Path(host) / "postmaster.pid").exists()
    # `make clean`: their data goes, wherever PDEX_VAR_DIR put it.
    run_embedded("clean", var_dir)
    assert not Path(host).exists() and not Path(urls["REDIS_URL"].removeprefix("unix://").split("?")[0]).exists()


def test_ensure_database_creates_a_missing_database_once():
    from django.conf import settings

    from config.embedded import ensure_database

    s = settings.DATABASES["default"]
    name = f"pdex_ensure_{os.getpid()}"
    host = s["HOST"] or "127.0.0.1"
    url = (f"postgres://{s['USER'] or 'postgres'}@/{name}?host={host}" if host.startswith("/")
           else f"postgres://{s['USER'] or 'postgres'}@{host}:{s['PORT'] or 5432}/{name}")
    admin = {"dbname": "postgres", "user": s["USER"] or "postgres", "host": host, "port": s["PORT"] or None}
    try:
        ensure_database(url)
        ensure_database(url)  # a second call finds it and does nothing
        with psycopg.connect(**{k: v for k, v in admin.items() if v}) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()[0] == 1
    finally:
        with psycopg.connect(**{k: v for k, v in admin.items() if v}, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
