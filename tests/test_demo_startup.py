"""`make demo` when a process dies at start-up: it names the process and prints that process's own error."""

from __future__ import annotations

import io
import socket
import sys

import pytest

from scripts import demo


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_process_that_dies_at_start_up_is_named_with_its_own_error(tmp_path, capsys):
    # web says it is up (and leaves a mark), then waits; beat dies once web has spoken, so both have output.
    up = tmp_path / "web-up"
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"web: {sys.executable} -c 'import pathlib, time; print(\"web up\", flush=True); "
        f"pathlib.Path(\"{up}\").touch(); time.sleep(60)'\n"
        f"beat: {sys.executable} -c 'import pathlib, sys, time; print(\"starting beat\", flush=True); "
        f"[time.sleep(0.05) for _ in range(600) if not pathlib.Path(\"{up}\").exists()]; "
        "sys.exit(\"FileNotFoundError: [Errno 2] No such file or directory: var/celerybeat-schedule.dat\")'\n")
    port = free_port()
    services, log = demo.start_services(port, procfile)
    try:
        with pytest.raises(SystemExit) as stopped:
            demo.wait_ready(f"http://127.0.0.1:{port}", services, log)
    finally:
        demo.stop(services)
    message = str(stopped.value)
    assert message.startswith("beat.1 stopped (exit 1) before /readyz answered; its last lines:")
    assert "    starting beat" in message
    assert "No such file or directory: var/celerybeat-schedule.dat" in message
    assert "web up" not in message                    # the other process's lines are not the error
    assert "web up" in capsys.readouterr().out        # …but everything still reached the terminal


def test_honcho_lines_are_kept_per_process_and_the_first_stop_is_the_failure():
    log = demo.ServiceLog(io.StringIO(""), out=io.StringIO())
    for line in ["10:00:00 system   | web.1 started (pid=1)", "10:00:00 web.1    | Listening",
                 "10:00:01 worker.1 | Traceback (most recent call last):", "10:00:01 worker.1 | ImportError: x",
                 "10:00:01 system   | worker.1 stopped (rc=1)", "10:00:01 system   | sending SIGTERM to web.1",
                 "10:00:02 system   | web.1 stopped (rc=-15)"]:
        log.take(line)
    assert log.failure() == ("worker.1 stopped (exit 1) before /readyz answered; its last lines:\n"
                             "    Traceback (most recent call last):\n    ImportError: x")
    assert demo.ServiceLog(io.StringIO(""), out=io.StringIO()).failure() is None
