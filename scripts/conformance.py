#!/usr/bin/env python3
"""`make conformance`: the SMART Bulk Data Tester (BDT) against a live service of our own, v2 and v1 mode.

On its own, in this order:

1. drops and recreates a database of its own (`--database`, default `pdex_conformance`) on the configured
   PostgreSQL server (`DATABASE_URL`'s server, else the local or private one `config.embedded` finds), migrates
   it and loads `sample/` plus the synthesized payer data, exactly as `make demo` does;
2. makes an ES384 client key pair (`make_client_keys`) and registers a partner with its JWKS by value
   (`create_partner`, NPI 1999999999); with `--with-jwks-url` a second partner whose keys are only at a JWKS
   URL served by this script on 127.0.0.1;
3. starts web (gunicorn), a Celery worker and beat on that database, with a queue, cache prefix and export folder
   of their own;
4. gives each partner a match Group through the real `$bulk-member-match` over HTTP (one MemberBundle per loaded
   member, each with a valid consent naming the partner), as `scripts/partner_play.py` builds them;
5. copies the tester (`--bdt`, default `../shared/tools/bdt`) to a temporary folder, runs
   `npm ci --omit=dev --no-audit --no-fund` there, and runs it with a small runner of ours that uses BDT's own
   loader and test runner (BDT's `json` reporter drops the failure reasons; ours keeps each test's status,
   reason and HTTP exchanges) in v2 mode (`apiVersion 2`) and v1 mode (`apiVersion 1`);
6. prints pass / fail / not-supported per mode and every failing and not-supported test with its reason, writes
   the details to `$PDEX_VAR_DIR/conformance/` (`summary.json`, `bdt-<run>.jsonl`, the processes' logs),
   stops every process it started, and exits 1 when the v2 pass count is below the floor in
   `scripts/conformance-floor.txt` (2 when the harness itself could not run).

The tester's config leaves `systemExportEndpoint` out, so BDT detects system-level export from our
CapabilityStatement (an `export` operation with the Bulk Data canonical) — the tests for it are not-supported
until we declare it. BDT's known contradictions with the specifications are listed in
`../shared/tools/README.md`.

    make conformance
    .venv/bin/python scripts/conformance.py --with-jwks-url --port 18150 --database pdex_bdt
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from config import queues  # noqa: E402 - the checkout's own modules, once it is on the path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

FLOOR_FILE = ROOT / "scripts" / "conformance-floor.txt"
DEFAULT_BDT = ROOT.parent / "shared" / "tools" / "bdt"
REQUESTER_NPI = "1999999999"
AGREEMENT_DATE = date.today().isoformat()  # the tester's partner has its data-sharing agreement on file
READY_TIMEOUT = 90
MATCH_TIMEOUT = 180
STATUSES = ("succeeded", "failed", "not-supported", "skipped", "not-implemented", "aborted", "not-run")

# The runner: BDT's own loader and TestRunner (build/lib/bdt.js), one JSON line per test with its reason and the
# HTTP exchanges it logged. Tests a failing group `before` hook never ran are reported as "not-run".
RUNNER_JS = r"""
"use strict";
const fs = require("fs");
const BDT = require("./build/lib/bdt").default;
const [configPath, apiVersion, outPath] = process.argv.slice(2);
const MAX_BODY = 3000;

function clip(value) {
    let text = typeof value === "string" ? value : JSON.stringify(value);
    if (text === undefined) return null;
    return text.length > MAX_BODY ? text.slice(0, MAX_BODY) + "…" : text;
}

function entry(e) {
    const data = (e.data || []).map(d => {
        if (e.tags && e.tags.includes("request")) {
            return { method: d.method, url: d.url, headers: d.headers, payload: clip(d.payload) };
        }
        if (e.tags && e.tags.includes("response")) {
            return { statusCode: d.statusCode, headers: d.headers, body: clip(d.body) };
        }
        return typeof d === "string" ? d : clip(d);
    });
    return { type: e.type, label: e.label, tags: e.tags, data };
}

(async () => {
    const config = await BDT.loadConfigFile(configPath);
    const bdt = new BDT({ ...config, apiVersion, bail: false, match: "" });
    const root = bdt.load("**/*.test.js");
    const runner = bdt.createRunner();
    const out = fs.openSync(outPath, "w");
    const groups = [];
    const seen = new Set();
    runner.on("groupStart", g => groups.push(g.name));
    runner.on("groupEnd", () => groups.pop());
    runner.on("testEnd", t => {
        seen.add(t.path);
        fs.writeSync(out, JSON.stringify({
            id: t.id, path: t.path, name: t.name, suite: groups.slice(1).join(" › "), status: t.status,
            minVersion: t.minVersion ? String(t.minVersion) : null,
            maxVersion: t.maxVersion ? String(t.maxVersion) : null,
            ms: (t.endedAt || 0) - (t.startedAt || 0),
            console: t.console.entries.map(entry)
        }) + "\n");
    });
    await runner.run(root);
    (function walk(node, trail) {
        for (const child of node.children || []) {
            if (child.children) { walk(child, trail.concat(child.name)); continue; }
            if (!seen.has(child.path)) {
                fs.writeSync(out, JSON.stringify({
                    id: child.id, path: child.path, name: child.name, suite: trail.join(" › "),
                    status: "not-run", console: [{ type: "error", label: "error", tags: [],
                        data: ["not run: a group hook of its suite failed"] }]
                }) + "\n");
            }
        }
    })(root, []);
    fs.closeSync(out);
})().catch(error => { console.error(error && error.stack || error); process.exit(2); });
"""


class HarnessError(Exception):
    """The harness could not get as far as a tester run (exit 2)."""


# --- environment ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database (keeps ?host=… of a socket server)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def recreate_database(server_url: str, name: str) -> str:
    import psycopg
    from psycopg import sql

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise HarnessError(f"database name {name!r}: lower-case letters, digits and _ only")
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def prepare_environment(args: argparse.Namespace) -> tuple[dict[str, str], Path]:
    """Every variable web, worker, beat and this process share; the service's own database and folders."""
    var_dir = Path(os.environ.get("PDEX_VAR_DIR") or ROOT / "var").resolve()
    os.environ["PDEX_VAR_DIR"] = str(var_dir)
    out = var_dir / "conformance"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from config import embedded  # reads PDEX_VAR_DIR at import

    server = os.environ.get("DATABASE_URL") or embedded.database_url()
    database_url = recreate_database(server, args.database)
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("REDIS_URL") or embedded.redis_url(),
        "CELERY_QUEUE": os.environ.get("CELERY_QUEUE") or "pdex-conformance",
        "CACHE_KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX") or "pdex-conformance",
        "EXPORT_STORAGE_URL": f"file://{out / 'exports'}",
        "FHIR_BASE_URL": f"http://127.0.0.1:{args.port}/fhir",
        "PORT": str(args.port),
        # The partner of the --with-jwks-url run publishes its keys on plain http on 127.0.0.1.
        "JWKS_ALLOW_HTTP": "true",
        # BDT asks for a token for almost every one of its tests (hundreds a minute, from one client and one
        # address); a real partner needs one every five minutes. The limits stay on, far above the tester's pace.
        "TOKEN_RATE_PER_CLIENT": os.environ.get("TOKEN_RATE_PER_CLIENT") or "5000",
        "TOKEN_RATE_PER_ADDRESS": os.environ.get("TOKEN_RATE_PER_ADDRESS") or "10000",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TOKEN_ENDPOINT_URL",):  # derived from FHIR_BASE_URL, as a real deployment on this port would
        os.environ.pop(name, None)
    os.environ.update(values)
    return {**os.environ, **values}, out


# --- data, partners and match Groups ------------------------------------------------------------

def call(command: str, *args: str) -> str:
    from django.core.management import call_command

    stdout = io.StringIO()
    call_command(command, *args, stdout=stdout, stderr=stdout)
    return stdout.getvalue()


def load_data() -> None:
    print("Migrating, loading sample/ and the payer data …", flush=True)
    call("migrate", "--noinput")
    call("load_ndjson", str(ROOT / "sample"), "--no-progress")
    call("synthesize_payer_data", "--seed", "42")


@dataclass
class Client:
    """A registered partner as the tester sees it."""

    label: str
    client_id: str
    private_jwk: dict[str, Any]
    jwks_url: str = ""
    group_id: str = ""
    group_members: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def register(label: str, key_dir: Path, *, jwks_url: str = "") -> Client:
    call("make_client_keys", "--alg", "ES384", "--out", str(key_dir))
    private_jwk = json.loads((key_dir / "private_jwk.json").read_text())
    keys = ["--jwks-url", jwks_url] if jwks_url else ["--jwks", str(key_dir / "jwks.json")]
    printed = call("create_partner", "--name", f"BDT conformance client ({label})", "--npi", REQUESTER_NPI,
                   "--agreement-date", AGREEMENT_DATE, *keys)
    client_id = printed.strip().splitlines()[-1].strip()
    return Client(label=label, client_id=client_id, private_jwk=private_jwk, jwks_url=jwks_url)


def partner_play():
    """scripts/partner_play.py: the demo's requesting payer (its MemberBundle builder and HTTP client)."""
    path = ROOT / "scripts" / "partner_play.py"
    spec = importlib.util.spec_from_file_location("partner_play", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["partner_play"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_match_group(client: Client, base: str, token_url: str) -> None:
    """$bulk-member-match over HTTP for every loaded member, each with a valid consent naming this partner."""
    from pdex.models import Member, Resource

    play = partner_play()
    today = date.today()
    bundles = []
    for index, member in enumerate(Member.objects.exclude(member_number=None).order_by("fhir_id")):
        patient = Resource.objects.get(resource_type="Patient", fhir_id=member.fhir_id).body
        scenario = "as on file, #regular consent" if index % 3 == 2 else "as on file, #sensitive consent"
        bundles.append(play.member_bundle(patient, member.member_number, scenario, today))
    if not bundles:
        raise HarnessError("no members with a member number were loaded")
    partner = play.Partner(base=base, client_id=client.client_id, private_jwk=client.private_jwk,
                           token_url=token_url)
    status_url = partner.kick_off("Group/$bulk-member-match", {"resourceType": "Parameters", "parameter": bundles})
    deadline = time.monotonic() + MATCH_TIMEOUT
    while True:  # partner.wait() draws a progress bar; this stays quiet
        # A fresh connection per poll: waiting exactly Retry-After on a kept-alive one can meet the server's
        # keep-alive timeout (issue 11 item 7); the harness must not fail on that.
        response = partner.call("GET", status_url, headers={"Accept": "application/json", "Connection": "close"})
        if response.status_code == 200:
            manifest = response.json()
            break
        if response.status_code not in (202, 429) or time.monotonic() > deadline:
            raise HarnessError(f"$bulk-member-match status {response.status_code}: {response.text[:300]}")
        time.sleep(float(response.headers.get("Retry-After", "2")))
    groups = [g for item in manifest["output"] if item["type"] == "Group" for g in partner.download(item)]
    client.outcomes = {g["code"]["coding"][0]["code"]: len(g.get("member", [])) for g in groups}
    matched = next((g for g in groups if g["code"]["coding"][0]["code"] == "match"), None)
    if matched is None or not matched.get("member"):
        raise HarnessError(f"$bulk-member-match matched nobody: {client.outcomes}")
    client.group_id, client.group_members = matched["id"], len(matched["member"])


class JwksServer:
    """Serves one public JWK Set at http://127.0.0.1:PORT/jwks.json (the --with-jwks-url partner's keys)."""

    def __init__(self) -> None:
        self.body = b"{}"
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=60")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- web, worker, beat ---------------------------------------------------------------------------

class Services:
    """web + worker + beat, each in a process group of its own, so stop() ends exactly what was started."""

    def __init__(self, env: dict[str, str], out: Path) -> None:
        self.env, self.out = env, out
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: list[Any] = []

    def start(self, port: int) -> None:
        bin_dir = Path(sys.executable).parent
        tool = lambda name: str(bin_dir / name) if (bin_dir / name).exists() else name  # noqa: E731
        var_dir = Path(self.env["PDEX_VAR_DIR"])
        commands = {
            "web": [tool("gunicorn"), "-c", "config/gunicorn.py", "config.wsgi",
                    "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--threads", "4", "--timeout", "120", "--access-logfile", "-"],
            # One worker on every queue of this service (export, match, control, maintenance: config/queues.py).
            "worker": [tool("celery"), "-A", "config", "worker", "-l", "info", "-c", "2", "--without-gossip",
                       "--without-mingle", "-Q", queues.worker_queues(self.env["CELERY_QUEUE"]),
                       "-n", f"conformance-{port}@%h"],
            "beat": [tool("celery"), "-A", "config", "beat", "-l", "info",
                     "--schedule", str(var_dir / "conformance" / "celerybeat-schedule")],
        }
        for name, command in commands.items():
            log = open(self.out / f"{name}.log", "wb")
            self.logs.append(log)
            self.processes[name] = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.out / f"{name}.log").read_text(errors="replace")[-2000:]
                raise HarnessError(f"{name} exited ({process.returncode}):\n{tail}")

    def wait_ready(self, base: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.check()
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise HarnessError(f"{base}/readyz did not answer 200 within {READY_TIMEOUT} s")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for log in self.logs:
            log.close()
        self.processes.clear()


# --- the tester ----------------------------------------------------------------------------------

def install_bdt(source: Path, work: Path) -> Path:
    if not (source / "build" / "lib" / "bdt.js").exists():
        raise HarnessError(f"no BDT at {source} (build/lib/bdt.js missing); pass --bdt")
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise HarnessError(f"{tool} not found; BDT needs Node.js (20)")
    target = work / "bdt"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules"), symlinks=True)
    for path in [target, *target.rglob("*")]:  # the source may be read-only; the copy must not be
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode | 0o200)
    print(f"Installing BDT ({source}) in {target} …", flush=True)
    done = subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=target,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise HarnessError(f"npm ci failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    (target / "conformance-runner.js").write_text(RUNNER_JS)
    return target


def bdt_config(client: Client, base: str, token_url: str) -> dict[str, Any]:
    authentication: dict[str, Any] = {
        "type": "backend-services", "optional": False, "tokenEndpoint": token_url, "clientId": client.client_id,
        "scope": "system/*.read", "privateKey": client.private_jwk, "tokenSignAlgorithm": "ES384",
        "tokenExpiresIn": "5m",
    }
    if client.jwks_url:  # BDT: an empty jwksUrl is a config error, so the key is left out otherwise
        authentication["jwksUrl"] = client.jwks_url
    return {
        "baseURL": f"{base}/fhir",
        # systemExportEndpoint left out: BDT detects it from the CapabilityStatement.
        "patientExportEndpoint": "Patient/$export",
        "groupExportEndpoint": f"Group/{client.group_id}/$export",
        "fastestResource": "Patient",
        "supportedResourceTypes": ["Patient", "Observation"],
        "authentication": authentication,
        "requests": {"strictSSL": True, "timeout": 30000, "customHeaders": {}},
    }


def run_bdt(bdt: Path, config: dict[str, Any], api_version: str, label: str, out: Path,
            services: Services, timeout: int) -> list[dict[str, Any]]:
    config_path = out / f"bdt-config-{label}.js"
    config_path.write_text("module.exports = " + json.dumps(config, indent=2) + ";\n")
    config_path.chmod(0o600)  # it holds the test client's private key
    results_path = out / f"bdt-{label}.jsonl"
    print(f"Running BDT, {label} (apiVersion {api_version}) …", flush=True)
    started = time.monotonic()
    with open(out / f"bdt-{label}.log", "wb") as log:
        process = subprocess.Popen(["node", "conformance-runner.js", str(config_path), api_version,
                                    str(results_path)], cwd=bdt, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    raise HarnessError(f"BDT {label} ran longer than {timeout} s")
                services.check()
                time.sleep(1)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    if process.returncode != 0:
        tail = (out / f"bdt-{label}.log").read_text(errors="replace")[-2000:]
        raise HarnessError(f"BDT {label} exited {process.returncode}:\n{tail}")
    results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    if not results:
        raise HarnessError(f"BDT {label} reported no tests")
    print(f"  {len(results)} tests in {time.monotonic() - started:.0f} s", flush=True)
    return results


def reason(test: dict[str, Any]) -> str:
    """Why a test failed (its error entries) or is not supported (its last info entry), on one line."""
    wanted = "error" if test["status"] in ("failed", "not-run") else "info"
    texts = [d for e in test.get("console", []) if e["type"] == wanted for d in e["data"] if isinstance(d, str)]
    if wanted == "info":
        texts = texts[-1:]
    text = " / ".join(texts) or "(no reason given)"
    text = re.sub(r"^(Error|AssertionError|NotSupportedError): ", "", text)
    text = re.sub(r"\s*\n\s*", " ", text).replace("✖ ", "✖")
    return text


def counts(results: list[dict[str, Any]]) -> Counter:
    return Counter(test["status"] for test in results)


def report(label: str, results: list[dict[str, Any]]) -> None:
    c = counts(results)
    ran = sum(c.values()) - c["skipped"]
    print(f"\n== {label}: {c['succeeded']} pass, {c['failed']} fail, {c['not-supported']} not supported "
          f"({ran} tests; {c['skipped']} skipped for the API version"
          + "".join(f", {c[s]} {s}" for s in ("not-implemented", "aborted", "not-run") if c[s]) + ")")
    for status, title in (("failed", "failing"), ("not-run", "not run"), ("aborted", "aborted"),
                          ("not-supported", "not supported")):
        tests = [t for t in results if t["status"] == status]
        if tests:
            print(f"-- {title} ({len(tests)}):")
            for test in tests:
                print(f"  [{test['path']}] {test['suite']} › {test['name']}\n      {reason(test)[:600]}")


def read_floor(path: Path) -> int:
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return int(line)
    raise HarnessError(f"no number in {path}")


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=os.environ.get("CONFORMANCE_DB_NAME", "pdex_conformance"),
                        help="database to drop and recreate (default pdex_conformance, or $CONFORMANCE_DB_NAME)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CONFORMANCE_PORT", "0")) or None,
                        help="web port (default: a free one, or $CONFORMANCE_PORT)")
    parser.add_argument("--bdt", type=Path, default=Path(os.environ.get("BDT_DIR", DEFAULT_BDT)),
                        help="the tester to copy (default ../shared/tools/bdt, or $BDT_DIR)")
    parser.add_argument("--modes", default="2,1", help="API versions to run, in order (default 2,1)")
    parser.add_argument("--with-jwks-url", action="store_true",
                        help="also run v2 for a second partner whose keys are only at a JWKS URL")
    parser.add_argument("--floor-file", type=Path, default=FLOOR_FILE)
    parser.add_argument("--no-floor", action="store_true", help="report only, never fail on the floor")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one tester run may take")
    parser.add_argument("--keep-bdt", action="store_true", help="keep the tester's temporary copy")
    args = parser.parse_args(argv)
    args.port = args.port or free_port()

    # SIGTERM (CI, a parent make) ends like Ctrl-C: the finally blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    services: Services | None = None
    jwks_server: JwksServer | None = None
    work = Path(tempfile.mkdtemp(prefix="pdex-bdt-"))
    runs: dict[str, list[dict[str, Any]]] = {}
    clients: list[Client] = []
    try:
        env, out = prepare_environment(args)
        import django

        django.setup()
        load_data()
        clients.append(register("jwks by value", work / "keys-inline"))
        if args.with_jwks_url:
            jwks_server = JwksServer()
            key_dir = work / "keys-url"
            from pdex.management.commands.make_client_keys import generate_private_jwk, public_jwks

            key_dir.mkdir()
            private = generate_private_jwk("ES384")
            jwks_server.body = json.dumps(public_jwks(private)).encode()
            (key_dir / "private_jwk.json").write_text(json.dumps(private))
            printed = call("create_partner", "--name", "BDT conformance client (jwks url)", "--npi",
                           REQUESTER_NPI, "--agreement-date", AGREEMENT_DATE, "--jwks-url", jwks_server.url)
            clients.append(Client(label="jwks url", client_id=printed.strip().splitlines()[-1].strip(),
                                  private_jwk=private, jwks_url=jwks_server.url))

        base = f"http://127.0.0.1:{args.port}"
        print(f"Starting web, worker and beat on port {args.port} (database {args.database}) …", flush=True)
        services = Services(env, out)
        services.start(args.port)
        services.wait_ready(base)
        token_url = requests.get(f"{base}/fhir/.well-known/smart-configuration", timeout=10).json()["token_endpoint"]
        for client in clients:
            make_match_group(client, base, token_url)
            print(f"  partner {client.client_id} ({client.label}): match Group {client.group_id} "
                  f"with {client.group_members} members; outcomes {client.outcomes}", flush=True)

        bdt = install_bdt(args.bdt, work)
        plan = [(f"v{mode.strip()}", mode.strip(), clients[0]) for mode in args.modes.split(",") if mode.strip()]
        if args.with_jwks_url:
            plan.append(("v2-jwks-url", "2", clients[1]))
        for label, mode, client in plan:
            runs[label] = run_bdt(bdt, bdt_config(client, base, token_url), mode, label, out, services,
                                  args.timeout)
    except HarnessError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - any other harness failure is exit 2 too, never mistaken for the floor's 1
        traceback.print_exc()
        return 2
    finally:
        if services:
            print("Stopping web, worker and beat …", flush=True)
            services.stop()
        if jwks_server:
            jwks_server.stop()
        if args.keep_bdt:
            print(f"BDT copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for label, results in runs.items():
        report(label, results)
    summary = {label: {"counts": dict(counts(results)),
                       "failed": [{"path": t["path"], "suite": t["suite"], "name": t["name"], "reason": reason(t)}
                                  for t in results if t["status"] in ("failed", "not-run", "aborted")],
                       "not_supported": [{"path": t["path"], "suite": t["suite"], "name": t["name"],
                                          "reason": reason(t)} for t in results if t["status"] == "not-supported"]}
               for label, results in runs.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"\nDetails: {out}/summary.json, bdt-<run>.jsonl (each test's HTTP exchanges), web/worker/beat logs")

    if "v2" not in runs or args.no_floor:
        return 0
    floor = read_floor(args.floor_file)
    passed = counts(runs["v2"])["succeeded"]
    if passed < floor:
        print(f"conformance: v2 passes {passed}, below the floor of {floor} ({args.floor_file.name})", file=sys.stderr)
        return 1
    print(f"v2 passes {passed} (floor {floor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
