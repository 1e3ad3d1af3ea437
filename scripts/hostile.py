"""`make test-hostile`: thousands of generated hostile requests against a live gunicorn (config/gunicorn.py).

1. recreates its own database (`HOSTILE_DATABASE`, default pdex_hostile_suite) on the server of DATABASE_URL and
   migrates it; builds the world of tests/hostile.py (partners A and B, A's member, data, Groups, a finished
   bulk match with its files);
2. starts web exactly as the Procfile does (`gunicorn -c config/gunicorn.py config.wsgi`) on `HOSTILE_PORT`
   (default 8110), with a small body limit (256 KiB) so that oversized bodies are cheap to send, and the OAuth
   rate limits on;
3. sends `--requests` (default 5,000) requests drawn by Hypothesis from tests/hostile.py's strategy — every
   endpoint of the URL conf, with and without tokens, odd ids and dates, repeated parameters, wrong content
   types, malformed, deep and huge bodies — over keep-alive connections, and prints:
   requests, 5xx, HTML bodies under /fhir/ and /oauth/, error bodies that are not JSON, connection errors, and
   the slowest request. Exit status 1 if any count but the first is not 0 or the slowest took 2 s or more.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BODY_LIMIT = 256 * 1024
SLOW_SECONDS = 2.0


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def recreate_database(server_url: str, name: str) -> str:
    import psycopg
    from psycopg import sql

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise SystemExit(f"database name {name!r}: lower-case letters, digits and _ only")
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def prepare(args: argparse.Namespace) -> dict[str, str]:
    from config import embedded

    server = os.environ.get("DATABASE_URL") or embedded.database_url()
    run = f"pdex-hostile-{uuid.uuid4().hex[:6]}"
    var_dir = Path(os.environ.get("PDEX_VAR_DIR") or ROOT / "var").resolve() / "hostile"
    values = {
        "DATABASE_URL": recreate_database(server, args.database),
        "REDIS_URL": os.environ.get("REDIS_URL") or embedded.redis_url(),
        "CELERY_QUEUE": run, "CACHE_KEY_PREFIX": run,
        "EXPORT_STORAGE_URL": f"file://{var_dir / 'exports'}",
        "FHIR_BASE_URL": f"http://127.0.0.1:{args.port}/fhir", "PORT": str(args.port),
        "DATA_UPLOAD_MAX_MEMORY_SIZE": str(BODY_LIMIT),
        # The spec examples' plans, as tests/hostile.py's world (the example bulk match) expects them.
        "PAYER_NPI": "9876543210", "MEMBER_ID_SYSTEM": "http://example.org/old-payer",
        "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(values)
    return {**os.environ, **values}


def create_partner(name: str, *, npi: str = ""):
    from oauth2_provider.models import Application

    from pdex.models import Partner

    application = Application.objects.create(name=name, client_type=Application.CLIENT_CONFIDENTIAL,
                                             authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS)
    scopes = ("system/*.read http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match "
              "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch")
    return Partner.objects.create(name=name, application=application, allowed_scopes=scopes, npi=npi, status="active")


def issue_token(partner) -> str:
    from datetime import timedelta

    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    token = AccessToken.objects.create(application=partner.application, token=uuid.uuid4().hex * 2,
                                       scope=" ".join(partner.allowed_scopes.split()),
                                       expires=timezone.now() + timedelta(hours=6))
    return token.token


class Web:
    """gunicorn as the Procfile starts it, on this run's database."""

    def __init__(self, env: dict[str, str], port: int):
        self.log_path = ROOT / "var" / "hostile-web.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
             "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("gunicorn did not answer /healthz within 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def purge_queues(queue: str) -> None:
    """The nudges web sent with no worker listening: take this run's queues away with it."""
    from config import queues
    from config.celery import app

    with app.connection_for_write() as conn:
        for name in queues.names(queue).values():
            conn.default_channel.queue_purge(name)


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.problems: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.connection_errors = 0
        self.slowest = (0.0, "")
        self.previous = ""
        self.previous_body = 0
        self.reconnects = 0

    def add(self, attack, status: int, elapsed: float, found: list[str]) -> None:
        self.requests += 1
        self.statuses[status // 100 * 100] += 1
        for problem in found:
            self.problems[problem if problem != str(status) else "5xx"] += 1
            self.examples.setdefault(problem, f"{attack.method} {attack.path[:200]} → {status}")
        if elapsed > self.slowest[0]:
            self.slowest = (elapsed, f"{attack.method} {attack.path[:160]} ({len(attack.body)} bytes) → {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=int(os.environ.get("HOSTILE_REQUESTS", "5000")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HOSTILE_PORT", "8110")))
    parser.add_argument("--database", default=os.environ.get("HOSTILE_DATABASE", "pdex_hostile_suite"))
    args = parser.parse_args(argv)
    env = prepare(args)

    import django

    django.setup()
    from django.core.management import call_command
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests import hostile

    print(f"database {args.database}: migrating and building the world …", flush=True)
    call_command("migrate", "--noinput", "-v0")
    names = iter(range(1000))
    world = hostile.build_world(lambda name, npi="": create_partner(name, npi=npi or f"19{next(names):08d}"),
                                issue_token)
    routes = hostile.endpoints()
    print(f"{len(routes)} endpoints; starting gunicorn -c config/gunicorn.py on port {args.port} …", flush=True)
    web = Web(env, args.port)
    tally = Tally()
    connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
    began = time.monotonic()

    @settings(max_examples=args.requests, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def attack_once(data) -> None:
        nonlocal connection
        attack = data.draw(hostile.hostile_requests(world, routes, body_limit=BODY_LIMIT))
        headers = dict(attack.headers)
        if attack.content_type:
            headers["Content-Type"] = attack.content_type
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                connection.request(attack.method, attack.path, body=attack.body or None, headers=headers)
                response = connection.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
                # gunicorn ends a kept-alive connection after answering a request whose body the service did not
                # read (past 64 KiB): the next request on it fails and, as any HTTP client does, goes again on
                # a new connection. A failure on a new connection is an error.
                if attempt == 1 and tally.previous_body > 64 * 1024:
                    tally.reconnects += 1
                    started = time.perf_counter()
                    continue
                tally.connection_errors += 1
                tally.examples.setdefault("connection", f"{attack.method} {attack.path[:200]} ({len(attack.body)} "
                                                        f"bytes, after {tally.previous}): {error!r}")
                return
        elapsed = time.perf_counter() - started
        tally.previous = f"{attack.method} {attack.path[:80]} ({len(attack.body)} bytes) → {response.status}"
        tally.previous_body = len(attack.body)
        found = hostile.problems(attack, response.status, response.getheader("Content-Type", ""), body)
        tally.add(attack, response.status, elapsed, found)
        if tally.requests % 500 == 0:
            print(f"  {tally.requests} requests …", flush=True)

    try:
        attack_once()
    finally:
        web.stop()
        purge_queues(env["CELERY_QUEUE"])
    seconds = time.monotonic() - began
    html = tally.problems["html"]
    not_json = tally.problems["error body not JSON"]
    print()
    print(f"requests:                                  {tally.requests} in {seconds:.0f} s over {len(routes)} "
          f"endpoints ({', '.join(f'{k // 100}xx {v}' for k, v in sorted(tally.statuses.items()))})")
    print(f"5xx:                                       {tally.problems['5xx']}")
    print(f"HTML bodies under /fhir/ and /oauth/:      {html}")
    print(f"error bodies not JSON under /fhir/, /oauth/: {not_json}")
    print(f"connection errors:                         {tally.connection_errors} ({tally.reconnects} requests sent "
          "again on a new connection after gunicorn closed one that carried an unread body over 64 KiB)")
    print(f"slowest request:                           {tally.slowest[0] * 1000:.0f} ms — {tally.slowest[1]}")
    for problem, example in tally.examples.items():
        print(f"  first {problem}: {example}")
    failed = (tally.problems["5xx"] or html or not_json or tally.connection_errors
              or tally.slowest[0] >= SLOW_SECONDS or tally.requests < args.requests)
    print("FAILED" if failed else f"OK: no 5xx, no HTML, every error JSON, slowest under {SLOW_SECONDS:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
