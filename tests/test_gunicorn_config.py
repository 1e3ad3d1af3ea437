"""config/gunicorn.py, as every web process runs it: polling that never resets, and gunicorn's own refusals
answered in JSON. Against a live gunicorn on the test database."""

from __future__ import annotations

import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings

from tests.builders import EXAMPLE_PAYER_NPI, bulk_match_request, example_members
from tests.conftest import QUEUE, ROOT, database_url_for_current_connection, issue_token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def web(transactional_db, tmp_path):
    """gunicorn -c config/gunicorn.py, as the Procfile starts it, on this test's database."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url_for_current_connection(), "REDIS_URL": settings.REDIS_URL,
           "CELERY_QUEUE": QUEUE, "CACHE_KEY_PREFIX": QUEUE, "DB_CONN_MAX_AGE": "0",
           "PAYER_NPI": EXAMPLE_PAYER_NPI, "MEMBER_ID_SYSTEM": "http://example.org/old-payer",
           "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir", "WEB_CONCURRENCY": "1"}
    log = open(tmp_path / "web.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                                "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((tmp_path / "web.log").read_text()[-3000:]) from None
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(timeout=20)
    log.close()


def test_keep_alive_outlasts_every_status_retry_after():
    config: dict = {}
    exec((ROOT / "config" / "gunicorn.py").read_text(), config)  # noqa: S102 - gunicorn reads it the same way
    assert config["keepalive"] > settings.STATUS_RETRY_AFTER_SECONDS
    assert config["worker_class"] == "gthread"  # idle kept-alive connections hold no thread


def test_a_web_worker_keeps_the_loaded_application_out_of_full_collections():
    config: dict = {}
    exec((ROOT / "config" / "gunicorn.py").read_text(), config)  # noqa: S102 - gunicorn reads it the same way
    before = gc.get_freeze_count()
    try:
        config["post_worker_init"](None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_a_client_waiting_exactly_retry_after_polls_on_one_connection(web, partner, settings):
    """A bulk match with no worker stays in progress: the client polls its status URL on one connection, waiting
    exactly the Retry-After it is given each time; no poll is reset and the connection is never replaced."""
    settings.PAYER_NPI = EXAMPLE_PAYER_NPI
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    example_members()
    token = issue_token(partner)
    connection = http.client.HTTPConnection("127.0.0.1", web, timeout=30)
    connection.request("POST", "/fhir/Group/$bulk-member-match", body=json.dumps(bulk_match_request()),
                       headers={"Authorization": f"Bearer {token}", "Prefer": "respond-async",
                                "Content-Type": "application/fhir+json"})
    kick_off = connection.getresponse()
    kick_off.read()
    assert kick_off.status == 202
    status_path = "/fhir/" + kick_off.getheader("Content-Location").split("/fhir/", 1)[1]
    sock = connection.sock
    waits = []
    for late in (0, 0, 0, 1):  # exactly Retry-After three times, then a second late (a busy client)
        connection.request("GET", status_path, headers={"Authorization": f"Bearer {token}"})
        poll = connection.getresponse()
        poll.read()
        assert poll.status == 202, poll.status
        assert connection.sock is sock and sock is not None  # the same connection, still open
        retry_after = int(poll.getheader("Retry-After"))
        waits.append(retry_after)
        time.sleep(retry_after + late)
    connection.request("GET", status_path, headers={"Authorization": f"Bearer {token}"})
    assert connection.getresponse().status in (200, 202) and connection.sock is sock
    # Retry-After is the estimated time left: 1 s for a young job, at most STATUS_RETRY_AFTER_SECONDS.
    assert waits[0] == 1 and all(1 <= wait <= settings.STATUS_RETRY_AFTER_SECONDS for wait in waits), waits


def raw(port: int, request: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /fhir/Patient?name=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    (b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /oauth/token HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400),
], ids=["request-line", "header-field", "bad-version"])
def test_what_gunicorn_refuses_itself_is_json(web, request_bytes, status):
    answer_status, content_type, body = raw(web, request_bytes)
    assert answer_status == status
    assert content_type == "application/json" and json.loads(body)["resourceType"] == "OperationOutcome"


def test_a_long_search_url_reaches_django(web, partner):
    """8 KiB of request line (the limit is gunicorn's maximum, 8190): Django answers, as an OperationOutcome."""
    path = "/fhir/Group?name=" + "a" * 7000
    answer_status, _, body = raw(web, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                      "Connection: close\r\n\r\n".encode())
    assert answer_status == 401 and json.loads(body)["resourceType"] == "OperationOutcome"
