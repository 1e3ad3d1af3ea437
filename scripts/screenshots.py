#!/usr/bin/env python3
"""`make screenshots`: the admin as a payer's staff see it, photographed by a real browser into docs/images/.

In a database of its own (`pdex_screenshots`, recreated) with its own queues and files, it loads the sample
members and payer data, starts gunicorn and a Celery worker on SCREENSHOT_PORT (default 18551), and plays
three requesting payers through the real API (register, token, $bulk-member-match, $davinci-data-export,
downloads; one asks for urgent handling, one cancels an export). Then headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by selenium) logs in to the admin and saves the dashboard, a
partner's received-data page and an export job as PNG. Everything it started is stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
PORT = int(os.environ.get("SCREENSHOT_PORT", "18551"))
BASE = f"http://127.0.0.1:{PORT}"
# The run's own folder and queues, made once: the ingest's worker processes import this module again.
WORK = Path(os.environ.get("PDEX_SCREENSHOT_WORK") or tempfile.mkdtemp(prefix="pdex-screens-"))
AGAIN = "PDEX_SCREENSHOT_WORK" in os.environ
QUEUE = os.environ["CELERY_QUEUE"] if AGAIN else f"pdex-screens-{secrets.token_hex(3)}"
os.environ.update({"PDEX_SCREENSHOT_WORK": str(WORK), "FHIR_BASE_URL": f"{BASE}/fhir",
                   "EXPORT_STORAGE_URL": f"file://{WORK}/exports", "CELERY_QUEUE": QUEUE, "CACHE_KEY_PREFIX": QUEUE,
                   "PROMETHEUS_MULTIPROC_DIR": str(WORK / "prom"), "JWKS_ALLOW_HTTP": "true", "LOG_LEVEL": "WARNING"})
(WORK / "prom").mkdir(exist_ok=True)
OUT = ROOT / "docs" / "images"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

import django  # noqa: E402
from benchkit import database_url, recreate_database  # noqa: E402


def load_partner_play():
    spec = importlib.util.spec_from_file_location("partner_play", ROOT / "scripts" / "partner_play.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["partner_play"] = module
    spec.loader.exec_module(module)
    return module


def start(env: dict[str, str]) -> list[subprocess.Popen]:
    log = open(WORK / "services.log", "w")
    venv = ROOT / ".venv" / "bin"
    web = subprocess.Popen([str(venv / "gunicorn"), "-c", "config/gunicorn.py", "config.wsgi",
                            "--bind", f"127.0.0.1:{PORT}", "--workers", "2",
                            # Longer than the clients' poll interval: a keep-alive connection closed by
                            # gunicorn just as the next poll reuses it would abort that poll.
                            "--threads", "4", "--keep-alive", "75"],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = subprocess.Popen([str(venv / "celery"), "-A", "config", "worker", "-c", "2", "-Q",
                               ",".join(f"{QUEUE}.{kind}" for kind in ("export", "match", "control", "maintenance")),
                               "-n", f"{QUEUE}@%h", "--without-gossip", "--without-mingle", "-l", "warning"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{BASE}/readyz", timeout=2).status_code == 200:
                return [web, worker]
        except requests.RequestException:
            time.sleep(0.5)
    stop([web, worker])
    sys.exit(f"the service did not start:\n{(WORK / 'services.log').read_text()[-3000:]}")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def play(play_module) -> None:
    """Three requesting payers through the real API: one as `make demo` plays it, two more of our own."""
    from pdex import partners
    from pdex.management.commands.make_client_keys import generate_private_jwk, public_jwks

    play_module.main(BASE, members=50)
    for name, members, urgent, cancel in (("Lakeside Health Plan", 30, True, False),
                                          ("Prairie Mutual", 12, False, True)):
        private = generate_private_jwk("ES384")
        record = partners.create_partner(name=name, jwks=public_jwks(private), npi=play_module.REQUESTER_NPI,
                                         status="active", registered_via="command", scope=play_module.SCOPES,
                                         agreement_date=date.today())
        partner = play_module.Partner(base=BASE, client_id=record.client_id, private_jwk=private,
                                      token_url=f"{BASE}/oauth/token")
        request, _ = play_module.members_request(members)
        manifest = partner.wait(partner.kick_off("Group/$bulk-member-match", request), "bulk member match")
        groups = [g for item in manifest["output"] if item["type"] == "Group" for g in partner.download(item)]
        matched = next(g for g in groups if g["code"]["coding"][0]["code"] == "match")
        body = {"resourceType": "Parameters", "parameter": [{"name": "exportType",
                                                             "valueString": play_module.EXPORT_TYPE}]}
        prefer = "respond-async, priority=urgent" if urgent else "respond-async"
        status_url = kick_off(partner, f"Group/{matched['id']}/$davinci-data-export", body, prefer)
        if cancel:
            partner.call("DELETE", status_url)
            status_url = kick_off(partner, f"Group/{matched['id']}/$davinci-data-export", body, prefer)
        manifest = partner.wait(status_url, "export")
        for item in manifest["output"][:3]:
            partner.download(item)


def kick_off(partner, path: str, body: dict, prefer: str) -> str:
    response = partner.call("POST", f"{BASE}/fhir/{path}", json=body, headers={
        "Prefer": prefer, "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
    response.raise_for_status()
    return response.headers["Content-Location"]


def photograph(password: str) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from exports.models import ExportJob
    from pdex.models import Partner

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROME_FLAGS, "--window-size=1440,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    saved = []
    try:
        driver.get(f"{BASE}/admin/login/")
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        partner = Partner.objects.get(name="Lakeside Health Plan")
        job = ExportJob.objects.filter(partner=partner, status=ExportJob.Status.COMPLETED).latest("created_at")
        for name, url in (("admin-dashboard", "/admin/"),
                          ("admin-partner-received", f"/admin/exports/partnerreceipts/{partner.pk}/change/"),
                          ("admin-export-job", f"/admin/exports/exportjob/{job.pk}/change/")):
            driver.get(BASE + url)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1440, min(max(height, 800), 2200))
            path = OUT / f"{name}.png"
            driver.save_screenshot(str(path))
            saved.append(path)
            driver.set_window_size(1440, 1000)
    finally:
        driver.quit()
    return saved


def main() -> None:
    django.setup()
    recreate_database(os.environ.get("SCREENSHOT_DATABASE", "pdex_screenshots"))
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("load_ndjson", str(ROOT / "sample"), "--no-progress", verbosity=0)
    call_command("synthesize_payer_data", "--seed", "42", verbosity=0)
    password = secrets.token_urlsafe(12)
    get_user_model().objects.create_superuser("admin", "admin@localhost", password)
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
           "SECRET_KEY": settings.SECRET_KEY}
    processes = start(env)
    try:
        play(load_partner_play())
        OUT.mkdir(parents=True, exist_ok=True)
        for path in photograph(password):
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")
    except Exception:
        print((WORK / "services.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        stop(processes)
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
