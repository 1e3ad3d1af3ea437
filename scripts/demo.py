#!/usr/bin/env python3
"""`make demo`: load the sample members and payer data, start web + worker + beat, print where to look.

Runs after `manage.py migrate`. Idempotent: loading and synthesizing twice changes nothing, and the admin
password is generated once and kept in var/demo-admin-password. If scripts/partner_play.py exists, its
main(base_url) plays a requesting payer against the running service. Ctrl-C stops everything.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import TextIO

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

ADMIN_USER = "admin"
READY_TIMEOUT = 90
# What honcho writes: "10:59:31 beat.1 | text", and "10:59:32 system | beat.1 stopped (rc=1)".
HONCHO_LINE = re.compile(r"^\S+ (?P<process>\S+?)\s*\| ?(?P<text>.*)$")
STOPPED = re.compile(r"^(?P<process>\S+) stopped \(rc=(?P<rc>-?\d+)\)")
LAST_LINES = 30


def prepare_data() -> None:
    from django.core.management import call_command

    print("Loading the sample members (sample/) …", flush=True)
    call_command("load_ndjson", str(ROOT / "sample"), "--no-progress")
    print("Adding payer data (Coverage, prior authorizations, sensitivity labels) …", flush=True)
    call_command("synthesize_payer_data", "--seed", "42")


def admin_password(var_dir: Path) -> str:
    """The demo admin's password: generated on the first run, then read back so every run prints it."""
    from django.contrib.auth import get_user_model

    secret = var_dir / "demo-admin-password"
    if not secret.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        secret.write_text(secrets.token_urlsafe(12))
        secret.chmod(0o600)
    password = secret.read_text().strip()
    user, _ = get_user_model().objects.get_or_create(username=ADMIN_USER, defaults={"email": "admin@localhost"})
    user.is_staff = user.is_superuser = user.is_active = True
    if not user.check_password(password):
        user.set_password(password)
    user.save()
    return password


class ServiceLog:
    """honcho's output passed through to the terminal, the last lines of each process kept, so that when a
    process dies at start-up the demo can say which one and show its own error (amid the others' logs it
    scrolls away, and honcho then stops the rest)."""

    def __init__(self, stream: TextIO, out: TextIO | None = None) -> None:
        self.last: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=LAST_LINES))
        self.stopped: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._pump, args=(stream, out or sys.stdout), daemon=True)
        self._thread.start()

    def _pump(self, stream: TextIO, out: TextIO) -> None:
        for line in stream:
            out.write(line)
            out.flush()
            self.take(line.rstrip("\n"))

    def take(self, line: str) -> None:
        parsed = HONCHO_LINE.match(line)
        if not parsed:
            return
        process, text = parsed["process"], parsed["text"]
        if process == "system":
            stopped = STOPPED.match(text)
            if stopped:
                self.stopped.append((stopped["process"], int(stopped["rc"])))
        else:
            self.last[process].append(text)

    def wait(self, timeout: float = 5) -> None:
        """Until honcho's output has all been read (it has exited)."""
        self._thread.join(timeout)

    def failure(self) -> str | None:
        """The first process that stopped on its own, with its exit code and its last lines."""
        if not self.stopped:
            return None
        process, code = self.stopped[0]  # the others were stopped by honcho after it
        lines = "\n".join(f"    {line}" for line in self.last.get(process, ())) or "    (it wrote nothing)"
        return f"{process} stopped (exit {code}) before /readyz answered; its last lines:\n{lines}"


def start_services(port: int, procfile: Path = ROOT / "Procfile",
                   log_path: Path | None = None) -> tuple[subprocess.Popen, ServiceLog]:
    """honcho runs the Procfile (web, worker, beat) in the foreground process group, so Ctrl-C reaches it; its
    output comes through ServiceLog, into `log_path` when given (else to the terminal)."""
    env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    honcho = Path(sys.executable).with_name("honcho")  # the virtualenv's, beside the python running us
    command = [str(honcho) if honcho.exists() else "honcho", "start", "-f", str(procfile), "-p", str(port)]
    services = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
    return services, ServiceLog(services.stdout, out=log_path.open("w") if log_path else None)


def wait_ready(base: str, services: subprocess.Popen, log: ServiceLog) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if services.poll() is not None:
            log.wait()
            sys.exit(log.failure() or f"the services stopped (exit {services.returncode}) before /readyz answered")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(services)
    sys.exit(f"{base}/readyz did not answer 200 within {READY_TIMEOUT} s")


def stop(services: subprocess.Popen, *, interrupted: bool = False) -> None:
    """Let honcho stop web, worker and beat; a terminal's Ctrl-C has already reached it, else ask it to."""
    if services.poll() is None and not interrupted:
        services.send_signal(signal.SIGINT)
    try:
        services.wait(timeout=20)
    except subprocess.TimeoutExpired:
        services.terminate()
        services.wait(timeout=10)


def play_partner(base: str) -> None:
    """Run scripts/partner_play.py's main(base_url) when that module exists."""
    path = ROOT / "scripts" / "partner_play.py"
    if not path.exists():
        return
    spec = importlib.util.spec_from_file_location("partner_play", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["partner_play"] = module  # dataclasses look their module up there
    print("\nA requesting payer plays the exchange (scripts/partner_play.py) …", flush=True)
    try:
        spec.loader.exec_module(module)
        module.main(base)
    except Exception as exc:  # noqa: BLE001 - the demo keeps serving even if the scripted partner fails
        print(f"partner_play failed: {type(exc).__name__}: {exc}", flush=True)


def main() -> None:
    import django

    django.setup()
    from django.conf import settings

    # Ctrl-C or a plain `kill` both end in a clean stop of web, worker and beat, whatever signal state the
    # demo inherited (a non-interactive shell starts background jobs with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # honcho is told in stop()
    port = int(os.environ.get("PORT", "8000"))
    base = f"http://127.0.0.1:{port}"
    prepare_data()
    password = admin_password(Path(settings.VAR_DIR))
    log_path = Path(settings.VAR_DIR) / "demo-services.log"
    print(f"\nStarting web, worker, maintenance and beat on port {port} (their log: {log_path}) …", flush=True)
    services, log = start_services(port, log_path=log_path)
    interrupted = False
    fhir = settings.FHIR_BASE_URL  # what discovery, metadata and every status URL advertise
    try:
        wait_ready(base, services, log)
        play_partner(base)
        print(f"""
The payer-to-payer service is up (the services' log: {log_path}).
  FHIR base        {fhir}
  metadata         {fhir}/metadata
  SMART discovery  {fhir}/.well-known/smart-configuration
  admin            {base}/admin/   user: {ADMIN_USER}   password: {password}
  health           {base}/healthz   {base}/readyz
Press Ctrl-C to stop.
""", flush=True)
        services.wait()
    except KeyboardInterrupt:
        interrupted = True
        print("\nStopping …", flush=True)
    finally:
        stop(services, interrupted=interrupted)


if __name__ == "__main__":
    main()
