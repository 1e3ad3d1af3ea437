"""What `make run` advertises and where it keeps its state follow the environment it is started with.

Settings are read once per process, so each case runs in a fresh Python process with the environment
`make run` gives web, worker and beat (PORT from the Makefile, PDEX_VAR_DIR from the user).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, django
django.setup()
from django.conf import settings
from config.celery import app
from pdex.auth.discovery import smart_configuration
from pdex.capability import capability_statement
statement = capability_statement()
print(json.dumps({
    "base": settings.FHIR_BASE_URL, "token": smart_configuration()["token_endpoint"],
    "registration": smart_configuration()["registration_endpoint"],
    "implementation": statement["implementation"]["url"],
    "schedule": app.conf.beat_schedule_filename, "exports": settings.EXPORT_STORAGE_URL,
    "secret_key_file": str(settings.VAR_DIR / "secret_key"), "static": str(settings.STATIC_ROOT),
}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"FHIR_BASE_URL", "TOKEN_ENDPOINT_URL", "PORT", "PDEX_VAR_DIR", "EXPORT_STORAGE_URL",
                           "SECRET_KEY", "DATABASE_URL"}}  # make run on one machine, whatever this shell names
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_advertised_urls_follow_port(tmp_path):
    seen = probe(PORT="18123", PDEX_VAR_DIR=str(tmp_path))
    assert seen["base"] == seen["implementation"] == "http://localhost:18123/fhir"
    assert seen["token"] == "http://localhost:18123/oauth/token"
    assert seen["registration"] == "http://localhost:18123/oauth/register"
    assert probe(PDEX_VAR_DIR=str(tmp_path))["base"] == "http://localhost:8000/fhir"


def test_fhir_base_url_wins_over_port(tmp_path):
    seen = probe(PORT="18123", PDEX_VAR_DIR=str(tmp_path), FHIR_BASE_URL="https://p2p.plan.example/fhir/")
    assert seen["base"] == "https://p2p.plan.example/fhir"
    assert seen["token"] == "https://p2p.plan.example/oauth/token"


def test_every_local_path_is_under_pdex_var_dir(tmp_path):
    var = tmp_path / "elsewhere"
    seen = probe(PDEX_VAR_DIR=str(var))
    assert seen["schedule"] == str(var / "celerybeat-schedule")
    assert seen["exports"] == f"file://{var / 'exports'}"
    assert seen["secret_key_file"] == str(var / "secret_key") and (var / "secret_key").exists()
    assert seen["static"] == str(var / "static")
    assert not (tmp_path / "var").exists()
