#!/usr/bin/env python3
"""`make demo`: two payers exchange end to end on this machine.

Payer A (the old plan, on $PORT) holds the sample members and payer data; payer B (the new plan, on $PORT+1)
has just enrolled some of them. Each is a whole instance of this service — its own database on the same
PostgreSQL, its own web, worker, maintenance worker and beat (the Procfile, under honcho), its own queues,
cache prefix and settings (PAYER_NPI, PAYER_NAME, PAYER_ORGANIZATION_ID, MEMBER_ID_SYSTEM, FHIR_BASE_URL) —
both on the embedded PostgreSQL and Redis when no local servers answer.

Then B does what a new plan does: it adds A to its registry (discovery), registers by RFC 7591 dynamic
registration (a software statement of a demo trust network that A trusts, so A activates it at once), records
its new members' consents — some `#sensitive`, some `#regular`, one member without consent, and one person
who was never A's member — and pulls (`manage.py p2p_pull`: match, export, download, validation, ingest).
It prints members per match outcome, resources received and ingested per type, validation failures, and both
admins. Ctrl-C stops everything. Running it again reuses both databases (loading twice changes nothing).

What B takes from A's database is only what a new plan knows from its own enrollment: each new member's
demographics and the old card they show (A's member id). Everything else goes over HTTP.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import demo  # noqa: E402 - scripts/demo.py: readiness, stopping, the admin password

from config import embedded  # noqa: E402

PORT = int(os.environ.get("PORT", "8000"))
VAR = embedded.VAR_DIR
# Names of the two databases, queues and cache prefixes: <DEMO_NAME>_a, <DEMO_NAME>_b.
NAME = os.environ.get("DEMO_NAME", "payer")
PAYERS = {
    "a": {"PAYER_NAME": "Old Plan Health", "PAYER_NPI": "1234567893", "PAYER_ORGANIZATION_ID": "payer-old-plan",
          "MEMBER_ID_SYSTEM": "https://old-plan.example.org/fhir/memberid",
          "MEMBER_UMB_SYSTEM": "https://old-plan.example.org/fhir/umb"},
    "b": {"PAYER_NAME": "New Plan Health", "PAYER_NPI": "1999999999", "PAYER_ORGANIZATION_ID": "payer-new-plan",
          "MEMBER_ID_SYSTEM": "https://new-plan.example.org/fhir/memberid",
          "MEMBER_UMB_SYSTEM": "https://new-plan.example.org/fhir/umb"},
}
TRUST_NETWORK = VAR / "demo-trust-network.json"
# What B's new members consented to (in A's order of member ids): the demo's cast.
CAST = ("sensitive", "regular", "sensitive", "regular", "sensitive", "no consent")


def with_database(url: str, name: str) -> str:
    """The same server, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def secret_key(role: str) -> str:
    """Each payer's SECRET_KEY, generated once under var/ (an instance naming its DATABASE_URL must name one)."""
    path = VAR / f"demo-{NAME}-{role}-secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def payer_env(role: str, server_url: str, redis_url: str) -> dict[str, str]:
    port = PORT if role == "a" else PORT + 1
    return {**os.environ, **PAYERS[role], "PORT": str(port), "SECRET_KEY": secret_key(role),
            "FLOWER_PORT": str(port + 100),
            "DATABASE_URL": with_database(server_url, f"pdex_{NAME}_{role}"), "REDIS_URL": redis_url,
            "CELERY_QUEUE": f"{NAME}-{role}", "CACHE_KEY_PREFIX": f"{NAME}-{role}",
            "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir", "EXPORT_STORAGE_URL": f"file://{VAR}/exports-{role}",
            "P2P_DOWNLOAD_DIR": str(VAR / f"p2p-downloads-{role}"), "BEAT_SCHEDULE": str(VAR / f"celerybeat-{role}"),
            "JWKS_ALLOW_HTTP": "true", "STATUS_RETRY_AFTER_SECONDS": "1", "P2P_DEFAULT_RETRY_SECONDS": "1",
            "LOG_LEVEL": "WARNING"}


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


# --- inside one payer's process (`demo_two_payers.py prepare a|b`) ---------------------------------

def trust_network_key() -> dict:
    """The demo trust network's signing key (a real network would be CARIN, a FAST UDAP community, …)."""
    from pdex.management.commands.make_client_keys import generate_private_jwk

    if not TRUST_NETWORK.exists():
        TRUST_NETWORK.parent.mkdir(parents=True, exist_ok=True)
        TRUST_NETWORK.write_text(json.dumps(generate_private_jwk("ES384")))
        TRUST_NETWORK.chmod(0o600)
    return json.loads(TRUST_NETWORK.read_text())


def prepare(role: str) -> None:
    """A: its members and payer data, and the trust network as a TrustAnchor. Both: an admin login."""
    import django

    django.setup()
    from django.conf import settings

    from pdex.management.commands.make_client_keys import public_jwks
    from pdex.models import TrustAnchor

    if role == "a":
        demo.prepare_data()
        TrustAnchor.objects.update_or_create(name="Demo trust network", defaults={
            "jwks": public_jwks(trust_network_key()), "active": True})
    print(demo.admin_password(Path(settings.VAR_DIR) / f"{NAME}-{role}"))


# --- payer B's side, in this process -----------------------------------------------------------------

def software_statement(fhir_base_b: str) -> str:
    """B's software statement from the trust network: who B is, certified (RFC 7591 §2.3)."""
    from joserfc import jwt
    from joserfc.jwk import import_key

    key = trust_network_key()
    now = int(time.time())
    claims = {"iss": "https://trust.example.org", "sub": fhir_base_b, "iat": now, "exp": now + 3600,
              "software_id": "pdex-p2p", "client_name": PAYERS["b"]["PAYER_NAME"], "npi": PAYERS["b"]["PAYER_NPI"]}
    return jwt.encode({"alg": "ES384", "kid": key["kid"], "typ": "JWT"}, claims, import_key(key),
                      algorithms=["ES384"])


def old_plan_records(database_url: str) -> list[tuple]:
    """What B's enrollment knows of its new members who were A's: demographics and the old card."""
    import psycopg

    url = database_url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        return conn.execute("""
            SELECT m.fhir_id, m.member_number, m.subscriber_id, p.body
              FROM pdex_member m JOIN pdex_resource p ON p.resource_type = 'Patient' AND p.fhir_id = m.fhir_id
             WHERE m.member_number IS NOT NULL ORDER BY m.fhir_id""").fetchall()


def file_agreement(database_url: str, client_id: str) -> None:
    """What A's admin does once B signs the data-sharing agreement: files its date (exports need one)."""
    import psycopg

    url = database_url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        conn.execute("""
            UPDATE pdex_partner SET agreement_date = coalesce(agreement_date, current_date)
             WHERE application_id = (SELECT id FROM oauth2_provider_application WHERE client_id = %s)""",
                     [client_id])


def new_card(patient_id: str, member_number: str, start) -> dict:
    """B's own Coverage of a new member (hrex-coverage): B's member id, B as payor, from today."""
    from django.conf import settings

    return {"resourceType": "Coverage", "id": f"cov-{patient_id}", "status": "active",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "MB"}]},
                            "system": settings.MEMBER_ID_SYSTEM, "value": member_number}],
            "subscriberId": member_number, "beneficiary": {"reference": f"Patient/{patient_id}"},
            "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                         "code": "self"}]},
            "payor": [{"reference": f"Organization/{settings.PAYER_ORGANIZATION_ID}"}],
            "period": {"start": start.isoformat()}}


def enroll(records: list[tuple]) -> list[tuple[str, str]]:
    """B's new members (B's own ids and member numbers) and their consents; returns (member, what they chose)."""
    from django.utils import timezone

    from pdex.ingest import load_resources
    from pdex.models import Member
    from requesting import consents
    from requesting.consent_resource import ConsentTerms, OldCard, Representative
    from requesting.models import PreviousPayer

    payer = PreviousPayer.objects.get(npi=PAYERS["a"]["PAYER_NPI"])
    today = timezone.localdate()
    people = [(f"np-{n:03d}", old) for n, old in enumerate(records[:len(CAST)])]
    stranger = {"resourceType": "Patient", "id": "np-999", "birthDate": "1980-02-29", "gender": "female",
                "name": [{"use": "official", "family": "Nobody", "given": ["Never"]}]}
    patients = [{**{k: v for k, v in old[3].items() if k in ("name", "birthDate", "gender", "address")},
                 "resourceType": "Patient", "id": ours} for ours, old in people] + [stranger]
    cards = [new_card(ours, f"NP{n:05d}", today) for n, ours in enumerate([*(p for p, _ in people), "np-999"])]
    load_resources(patients + cards, source="enrollment")  # ingest takes each member's identity from its card
    chosen = []
    for n, (ours, old) in enumerate(people):
        choice = CAST[n]
        if choice != "no consent":
            representative = Representative(name="Jennifer Person", role="HPOWATT", relationship="DAU") \
                if n == 2 else None
            consents.record_consent(
                member=Member.objects.get(fhir_id=ours), payer=payer,
                terms=ConsentTerms(choice, today, today + timedelta(days=90)), scenario="enrollment",
                coverage_start=today, old_card=OldCard(member_id=old[1], subscriber_id=old[2]),
                representative=representative, via="admin", actor="demo enrollment")
        chosen.append((ours, choice))
    consents.record_consent(
        member=Member.objects.get(fhir_id="np-999"), payer=payer,
        terms=ConsentTerms("sensitive", today, today + timedelta(days=90)), scenario="enrollment",
        coverage_start=today, old_card=OldCard(member_id="M000000000"), via="admin", actor="demo enrollment")
    chosen.append(("np-999", "sensitive (never A's member)"))
    return chosen


def table(jobs, chosen: list[tuple[str, str]]) -> str:
    """Members per match outcome, resources per type, validation failures; and the consent policies at work."""
    from pdex.models import Resource

    outcomes, received, ingested, unchanged, invalid = Counter(), Counter(), Counter(), Counter(), 0
    outcomes["not asked (no consent)"] = sum(choice == "no consent" for _, choice in chosen)
    for job in jobs:
        outcomes.update(job.pull_members.values_list("outcome", flat=True))
        received.update(job.received)
        ingested.update(job.ingested)
        unchanged.update(job.unchanged)
        invalid += sum(job.invalid.values())
    pulls = ", ".join(f"_since {job.since:%Y-%m-%d %H:%M:%S} (only what changed at A)" if job.since else
                      "everything (members never pulled)" for job in jobs)
    lines = ["", f"Pulls: {len(jobs)} — {pulls}",
             "Members per match outcome:  " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
             "", f"  {'resource type':<22}{'received':>10}{'ingested':>10}{'unchanged':>11}"]
    for kind in sorted(set(received) | set(ingested)):
        lines.append(f"  {kind:<22}{received[kind]:>10}{ingested[kind]:>10}{unchanged[kind]:>11}")
    lines.append(f"  {'total':<22}{sum(received.values()):>10}{sum(ingested.values()):>10}"
                 f"{sum(unchanged.values()):>11}")
    lines.append(f"Validation failures (FHIR R4, fhir.resources R4B): {invalid}")
    for policy in ("sensitive", "regular"):
        members = [m for m, choice in chosen if choice == policy]
        sensitive = Resource.objects.filter(member__fhir_id__in=members, sensitive=True).count()
        lines.append(f"Sensitive resources received for the #{policy} members: {sensitive}")
    return "\n".join(lines)


def play_new_plan(env_a: dict[str, str], env_b: dict[str, str]) -> str:
    """B registers with A, records consents, pulls; returns the table."""
    from django.core.management import call_command

    from requesting import registry
    from requesting.models import PreviousPayer, PullJob

    payer = PreviousPayer.objects.filter(npi=PAYERS["a"]["PAYER_NPI"]).first()
    if payer is None:
        payer = registry.add_previous_payer(name=PAYERS["a"]["PAYER_NAME"], npi=PAYERS["a"]["PAYER_NPI"],
                                            fhir_base_url=env_a["FHIR_BASE_URL"], actor="demo")
    if not payer.client_id or registry.check_connection(payer) != "ok":
        payer.software_statement = software_statement(env_b["FHIR_BASE_URL"])
        payer.save(update_fields=["software_statement"])
        registry.register_dynamically(payer, actor="demo")
    file_agreement(env_a["DATABASE_URL"], payer.client_id)
    print(f"B registered with A by dynamic registration: client id {payer.client_id}; "
          f"token: {registry.check_connection(payer)}; A filed B's data-sharing agreement", flush=True)
    chosen = enroll(old_plan_records(env_a["DATABASE_URL"]))
    print("B's new members:", ", ".join(f"{m} {c}" for m, c in chosen), flush=True)
    started = PullJob.objects.count()
    call_command("p2p_pull", "--payer", payer.npi, stdout=io.StringIO())
    jobs = list(PullJob.objects.order_by("created_at")[started:])
    return table(jobs, chosen)


def start_payer(role: str, env: dict[str, str]) -> tuple[subprocess.Popen, demo.ServiceLog]:
    """honcho runs the Procfile for one payer, in the foreground process group (Ctrl-C reaches it); its output
    goes to a log file, and a process that dies at start-up is named with its own error (demo.ServiceLog)."""
    honcho = Path(sys.executable).with_name("honcho")
    path = VAR / f"demo-{NAME}-{role}.log"
    services = subprocess.Popen([str(honcho) if honcho.exists() else "honcho", "start", "-f", "Procfile", "-p",
                                 env["PORT"]], cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    print(f"Payer {role.upper()}: web, worker, maintenance and beat on port {env['PORT']} (log: {path})", flush=True)
    return services, demo.ServiceLog(services.stdout, out=path.open("w"))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "prepare":
        prepare(sys.argv[2])
        return
    server_url = os.environ.get("DATABASE_URL") or embedded.database_url()
    redis_url = os.environ.get("REDIS_URL") or embedded.redis_url()
    envs = {role: payer_env(role, server_url, redis_url) for role in PAYERS}
    passwords = {}
    for role, env in envs.items():
        embedded.ensure_database(env["DATABASE_URL"])
        print(f"Payer {role.upper()} ({env['PAYER_NAME']}): migrating and loading …", flush=True)
        run(env, "manage.py", "migrate", "--noinput", "-v0")
        passwords[role] = run(env, str(Path(__file__)), "prepare", role).strip().splitlines()[-1]
    os.environ.update(envs["b"])  # this process is payer B's enrollment and admin
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    services, logs = {}, {}
    interrupted = False
    try:
        for role, env in envs.items():
            services[role], logs[role] = start_payer(role, env)
        for role, env in envs.items():
            demo.wait_ready(f"http://127.0.0.1:{env['PORT']}", services[role], logs[role])
        print("\nBoth payers are up. B pulls its new members' data from A …\n", flush=True)
        summary = play_new_plan(envs["a"], envs["b"])
        print(summary)
        for role, label in (("a", "A (old plan)"), ("b", "B (new plan)")):
            print(f"Admin of payer {label}  http://127.0.0.1:{envs[role]['PORT']}/admin/   "
                  f"user: {demo.ADMIN_USER}   password: {passwords[role]}")
        print("  B's pulls: /admin/requesting/pulljob/   members to act on: "
              "/admin/requesting/pullmember/?outcome__in=nomatch,consentconstraint\n"
              "  A's partner B and the consents it holds: /admin/pdex/partner/   /admin/consent/consent/\n"
              "Press Ctrl-C to stop both.", flush=True)
        for process in services.values():
            process.wait()
    except KeyboardInterrupt:
        interrupted = True
        print("\nStopping …", flush=True)
    finally:
        for process in services.values():
            demo.stop(process, interrupted=interrupted)


if __name__ == "__main__":
    main()
