"""Bulk member match benchmark: members matched per second, end to end through the real Celery path.

Builds BENCH_MEMBERS members from the Synthea Patients in ../shared/data (each person copied with a shifted
birth date and its own member number), submits one $bulk-member-match with as many MemberBundles carrying
realistic perturbations (typos, missing postal code, nicknames, swapped names, wrong birth dates, unknown
card numbers, expired consents), runs it on a real `celery worker` subprocess, and prints the throughput
from kick-off to completed job, and the outcome counts against what the perturbations should give.

It runs in a database of its own (`<the configured database>_bench_match`, re-created each run) and goes over
real HTTP: gunicorn (BENCH_PORT, default 8121) and a Celery worker are its children; the client posts the
kick-off and polls the status URL at the pace Retry-After asks, until the manifest.

    make bench-match            # or: BENCH_MEMBERS=2000 BENCH_WORKERS=2 .venv/bin/python scripts/bench_match.py
"""

from __future__ import annotations

import gzip
import json
import os
import random
import secrets
import sys
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The whole population in one request: the failure budget (matching/budget.py) must hold it.
os.environ.setdefault("MEMBER_MATCH_MAX_FAILURES", "1000000")

import django  # noqa: E402
from benchkit import Process, bench_database, database_url, recreate_database  # noqa: E402

recreate_database(bench_database("match"))  # before Django connects: a database of its own
django.setup()

import requests  # noqa: E402
from django.conf import settings  # noqa: E402
from django.utils import timezone  # noqa: E402
from oauth2_provider.models import AccessToken, Application  # noqa: E402

from config import queues  # noqa: E402
from consent.decision import SENSITIVE_POLICY_URI  # noqa: E402
from matching import normalize  # noqa: E402
from matching.models import MatchJob  # noqa: E402
from pdex.models import Member, Partner  # noqa: E402

# The full Synthea set of the project's shared notes: a clone does not have it (make test never needs it).
DATA = ROOT.parent / "shared" / "data" / "Patient.ndjson.gz"
N = int(os.environ.get("BENCH_MEMBERS", "10000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
PREFIX = "bench-"
REQUESTER_NPI = "1999999999"
NPI = "http://hl7.org/fhir/sid/us-npi"
MB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
REVERSE_NICKNAMES = {full: nick for nick, full in normalize.NICKNAMES.items()}

# perturbation → (share of bundles, outcome it should produce)
PERTURBATIONS = {
    "typo-given": (0.06, "match"), "no-postal": (0.06, "match"), "nickname": (0.03, "match"),
    "swapped-names": (0.02, "match"), "unknown-card-demographics-only": (0.03, "match"),
    "wrong-birth-date": (0.02, "nomatch"), "expired-consent": (0.02, "consentconstraint"),
    "not-our-member": (0.02, "nomatch"),
}


def synthea_patients() -> list[dict]:
    with gzip.open(DATA, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_members(patients: list[dict]) -> list[dict]:
    """N members: person k % len(patients), birth date shifted by k // len(patients) days."""
    Member.objects.filter(fhir_id__startswith=PREFIX).delete()
    people = []
    for k in range(N):
        patient = patients[k % len(patients)]
        name = normalize.official_name(patient)
        birth = date.fromisoformat(patient["birthDate"]) + timedelta(days=k // len(patients))
        postal = next((a.get("postalCode") for a in patient.get("address") or [] if a.get("postalCode")), "")
        people.append({"k": k, "family": name.get("family", ""), "given": list(name.get("given") or []),
                       "birth": birth, "gender": patient.get("gender", ""), "postal": postal or "01001"})
    Member.objects.bulk_create([
        Member(fhir_id=f"{PREFIX}{p['k']}", umb=f"BENCH-UMB-{p['k']}", member_number=f"BM{p['k']:08d}",
               subscriber_id=f"BS{p['k']:08d}", family=normalize.name(p["family"]),
               given=normalize.given_names(p["given"]), birth_date=p["birth"], gender=p["gender"],
               postal_code=normalize.postal_code(p["postal"]))
        for p in people], batch_size=2000)
    return people


def typo(text: str, rng: random.Random) -> str:
    letters = [c for c in text]
    if len(letters) > 4:
        i = rng.randrange(1, len(letters) - 1)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    return "".join(letters)


def member_bundle(person: dict, perturbation: str, rng: random.Random) -> dict:
    family, given = person["family"], list(person["given"])
    birth, postal, card = person["birth"], person["postal"], f"BM{person['k']:08d}"
    period = {"start": (date.today() - timedelta(days=30)).isoformat(),
              "end": (date.today() + timedelta(days=300)).isoformat()}
    if perturbation == "typo-given":
        given[0] = typo(given[0], rng)
    elif perturbation == "no-postal":
        postal = ""
    elif perturbation == "nickname":
        first = normalize.name(given[0])
        given[0] = REVERSE_NICKNAMES.get(first, given[0])
    elif perturbation == "swapped-names":
        family, given = given[0], [family]
    elif perturbation == "unknown-card-demographics-only":
        card = f"LOST{person['k']}"
    elif perturbation == "wrong-birth-date":
        birth = birth + timedelta(days=rng.choice([-400, -31, 1, 365]))
    elif perturbation == "expired-consent":
        period = {"start": "2024-01-01", "end": "2024-12-31"}
    elif perturbation == "not-our-member":
        card, family, birth = f"NOPE{person['k']}", family + "zz", birth + timedelta(days=5000)
    pid = f"p{person['k']}"
    patient = {"resourceType": "Patient", "id": pid, "name": [{"use": "official", "family": family, "given": given}],
               "gender": person["gender"], "birthDate": birth.isoformat(),
               "identifier": [{"type": MB, "system": "http://new-plan.example.org/member", "value": f"N{person['k']}"}]}
    if postal:
        patient["address"] = [{"postalCode": postal}]
    coverage = {"resourceType": "Coverage", "id": f"c{person['k']}", "status": "active",
                "identifier": [{"type": MB, "system": settings.MEMBER_ID_SYSTEM, "value": card}],
                "beneficiary": {"reference": f"Patient/{pid}"},
                "payor": [{"identifier": {"system": NPI, "value": settings.PAYER_NPI}}]}
    if perturbation in ("unknown-card-demographics-only", "not-our-member"):
        coverage["subscriberId"] = f"X{person['k']}"
    else:
        coverage["subscriberId"] = f"BS{person['k']:08d}"
    consent = {"resourceType": "Consent", "status": "active", "patient": {"reference": f"Patient/{pid}"},
               "policy": [{"uri": SENSITIVE_POLICY_URI}],
               "provision": {"type": "permit", "period": period, "actor": [
                   {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                         "code": "performer"}]},
                    "reference": {"identifier": {"system": NPI, "value": settings.PAYER_NPI}}},
                   {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                         "code": "IRCP"}]},
                    "reference": {"identifier": {"system": NPI, "value": REQUESTER_NPI}}}]}}
    return {"name": "MemberBundle", "part": [{"name": "MemberPatient", "resource": patient},
                                             {"name": "CoverageToMatch", "resource": coverage},
                                             {"name": "Consent", "resource": consent}]}


def build_request(people: list[dict]) -> tuple[dict, Counter]:
    rng = random.Random(20261123)
    expected: Counter = Counter()
    applied: Counter = Counter()
    bundles = []
    for person in people:
        roll, perturbation = rng.random(), "none"
        for name, (share, _) in PERTURBATIONS.items():
            if roll < share:
                perturbation = name
                break
            roll -= share
        applied[perturbation] += 1
        expected[PERTURBATIONS.get(perturbation, (0, "match"))[1]] += 1
        bundles.append(member_bundle(person, perturbation, rng))
    print("perturbations:", dict(sorted(applied.items())))
    return {"resourceType": "Parameters", "parameter": bundles}, expected


def bench_partner() -> tuple[Partner, str]:
    partner = Partner.objects.filter(name="Bench New Plan").first()
    if partner is None:
        application = Application.objects.create(
            name="Bench New Plan", client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS)
        partner = Partner.objects.create(name="Bench New Plan", application=application, npi=REQUESTER_NPI,
                                         status=Partner.Status.ACTIVE)
    token = AccessToken.objects.create(
        application=partner.application, token=uuid.uuid4().hex + uuid.uuid4().hex,
        scope="http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch system/Group.rs",
        expires=timezone.now() + timedelta(minutes=30))
    return partner, token.token


def start_services(queue: str, port: int) -> tuple[Process, Process]:
    """gunicorn and a Celery worker on this benchmark's database and queue, children of this process."""
    env = {**os.environ, "CELERY_QUEUE": queue, "CACHE_KEY_PREFIX": queue, "DATABASE_URL": database_url(),
           "REDIS_URL": settings.REDIS_URL, "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir", "DEBUG": "0",
           "SECRET_KEY": secrets.token_urlsafe(50), "LOG_LEVEL": "WARNING"}
    web = Process([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
                   "--bind", f"127.0.0.1:{port}", "--workers", "2",
                   "--threads", "4", "--timeout", "600"], env, "match-web")
    worker = Process([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues.worker_queues(queue),
                      "-c", str(WORKERS), "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
                      "-n", f"{queue}@%h"], env, "match-worker")
    web.wait_for("Booting worker")
    worker.wait_for("ready.")
    return web, worker


def main() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    queue = f"bench-match-{uuid.uuid4().hex[:6]}"
    port = int(os.environ.get("BENCH_PORT", "8121"))
    if not DATA.exists():
        raise SystemExit(f"no data at {DATA} (the benchmark needs the shared Synthea set, ../shared/data)")
    print(f"building {N} members and {N} MemberBundles from {DATA.name} in {settings.DATABASES['default']['NAME']} …")
    people = build_members(synthea_patients())
    body, expected = build_request(people)
    payload = json.dumps(body).encode()
    del body, people  # the web process would not hold the request's objects; neither does the bench
    _, token = bench_partner()
    web, worker = start_services(queue, port)
    try:
        http = requests.Session()
        http.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
        started = time.perf_counter()
        response = http.post(f"http://127.0.0.1:{port}/fhir/Group/$bulk-member-match", data=payload, timeout=600,
                             headers={"Content-Type": "application/fhir+json", "Prefer": "respond-async"})
        accepted = time.perf_counter()
        assert response.status_code == 202, response.content[:500]
        status_url = response.headers["Content-Location"]
        job_id = status_url.rstrip("/").rsplit("/", 1)[-1]
        wait, polls = response.headers.get("Retry-After", "1"), 0
        while True:
            time.sleep(float(wait))
            polls += 1
            status = http.get(status_url, timeout=60)
            if status.status_code == 200:
                break
            if status.status_code not in (202, 429) or worker.process.poll() is not None:
                raise SystemExit(f"status {status.status_code}: {status.text[:300]} (worker log {worker.log.name})")
            wait = status.headers.get("Retry-After", "1")
        finished = time.perf_counter()
        job = MatchJob.objects.get(pk=job_id)
        got = {"match": job.matched, "nomatch": job.no_match, "consentconstraint": job.consent_constrained}
        elapsed = finished - started
        server = (job.finished_at - job.created_at).total_seconds()
        print(f"request body: {len(payload) / 1e6:.1f} MB, {N} MemberBundles, {WORKERS} worker processes, "
              f"batches of {settings.MATCH_BATCH_SIZE}; over HTTP (gunicorn :{port})")
        print(f"kick-off (upload, validate + store entries): {accepted - started:.2f} s")
        print(f"kick-off → manifest over HTTP: {elapsed:.2f} s after {polls} poll(s)  →  {N / elapsed:,.0f} members/s "
              f"end to end (goal ≥ 3,000/s)")
        print(f"kick-off → job {job.status} (job row): {server:.2f} s  →  {N / server:,.0f} members/s")
        print(f"manifest outputs: {[(o['type'], o['count']) for o in status.json().get('output', [])]}")
        print(f"queued → running: {(job.started_at - job.created_at).total_seconds():.2f} s, running → completed: "
              f"{(job.finished_at - job.started_at).total_seconds():.2f} s")
        print(f"outcomes: {got}")
        print(f"expected from the perturbations: {dict(expected)}")
        misfiled = sum(abs(got.get(k, 0) - v) for k, v in expected.items()) // 2
        print(f"members in a different Group than their perturbation implies: {misfiled}")
    finally:
        worker.stop()
        web.stop()


if __name__ == "__main__":
    main()
