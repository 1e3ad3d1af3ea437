"""docs/quickstart.md, run: every command of the page, in order, against a live service and a real worker.

The page's ```sh blocks run in one bash process (so the variables they export carry over), in a folder of
the test's own, with curl wrapped to keep each block's last response; the ```http block under a command
block is its documented answer, whose status line and listed header names must match. The setup block is
the one thing replaced: the test names its own service and folder.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pdex import ingest, synthesize
from tests.conftest import ROOT, database_url_for_current_connection

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PAGE = ROOT / "docs" / "quickstart.md"
FENCE = re.compile(r"(<!-- walkthrough: setup[^>]*-->\s*)?```(sh|http)\n(.*?)```", re.S)


def walkthrough() -> list[tuple[str, str, str | None]]:
    """(kind, block, documented answer) for every ```sh block of the page; kind is "setup" or "step"."""
    blocks = [(bool(setup), lang, body) for setup, lang, body in FENCE.findall(PAGE.read_text())]
    steps = []
    for index, (setup, lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        answer = following[2] if following and following[1] == "http" else None
        steps.append(("setup" if setup else "step", body, answer))
    return steps


def last_response(trace: str) -> tuple[int, set[str]]:
    """The status and header names of the last response in a `curl -v` trace."""
    responses = re.split(r"^< (?=HTTP/)", trace, flags=re.M)[1:]
    assert responses, f"no response in:\n{trace[-2000:]}"
    lines = [line[2:] for line in ("< " + responses[-1]).splitlines() if line.startswith("< ")]
    status = int(lines[0].split()[1])
    names = {line.split(":", 1)[0].strip().lower() for line in lines[1:] if ":" in line}
    return status, names


def documented(answer: str) -> tuple[int, set[str]]:
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    return int(lines[0].split()[1]), {line.split(":", 1)[0].strip().lower() for line in lines[1:]}


def test_the_page_has_the_whole_exchange():
    text = "\n".join(body for _, body, _ in walkthrough())
    for call in ("/oauth/register", "/oauth/token", "$member-match", "$bulk-member-match", "MATCH_STATUS",
                 "/fhir/Group/$GROUP", "$davinci-data-export", "EXPORT_STATUS", "Encounter.ndjson", "$everything"):
        assert call in text, call
    assert all(answer for kind, body, answer in walkthrough() if kind == "step" and "curl" in body)


def test_every_request_of_the_quick_start_answers_as_documented(live_server, settings, tmp_path,
                                                                 celery_worker_process):
    settings.FHIR_BASE_URL = f"{live_server.url}/fhir"
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    settings.STATUS_RETRY_AFTER_SECONDS = 1
    ingest.load_paths([ROOT / "sample"], validate=False, workers=1, progress=False)
    synthesize.synthesize(seed=42)
    celery_worker_process()

    traces = tmp_path / "traces"
    traces.mkdir()
    script = ["set -euo pipefail",
              f'curl() {{ command curl -v "$@" 2>>"{traces}/step-$STEP.trace"; }}',
              f"export BASE={live_server.url} REPO={ROOT}", f"cd {tmp_path}"]
    steps = walkthrough()
    for number, (kind, body, _) in enumerate(steps):
        if kind == "step":
            script += [f"STEP={number}", f"echo '--- step {number}' >&2", body]
    env = {**os.environ, "DATABASE_URL": database_url_for_current_connection(), "REDIS_URL": settings.REDIS_URL,
           "SECRET_KEY": settings.SECRET_KEY, "LOG_LEVEL": "WARNING"}
    run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    checked = 0
    for number, (kind, body, answer) in enumerate(steps):
        if kind != "step" or answer is None:
            continue
        status, names = last_response((traces / f"step-{number}.trace").read_text())
        want_status, want_names = documented(answer)
        assert status == want_status, f"step {number}:\n{body}"
        assert want_names <= names, f"step {number} lacks {want_names - names}"
        checked += 1
    assert checked >= 12
    # What the page says the member-match and the bulk match find.
    assert '"value": "UMB-' in run.stdout  # $member-match's MemberIdentifier
    assert "match: 1 member(s)" in run.stdout and "nomatch: 1 member(s)" in run.stdout
    assert "consentconstraint: 1 member(s)" in run.stdout
    assert int(re.search(r"^\s*(\d+) Encounter.ndjson", run.stdout, re.M).group(1)) > 0
    assert Path(tmp_path / "keys" / "private_jwk.json").stat().st_mode & 0o077 == 0
