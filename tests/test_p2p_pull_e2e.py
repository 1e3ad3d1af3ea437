"""Two payers exchange end to end: the new plan (this test run: its database, live_server, real workers) pulls
its new members' data from the old plan (a live instance of its own: database, web, worker, settings).

B registers with A by RFC 7591 dynamic registration (A's admin approves it), collects consents from its new
members — some `#sensitive`, some `#regular`, one member without consent, one who was never A's member —
and pulls: `$bulk-member-match`, `$davinci-data-export` of the MatchedMembers Group, downloads, validation,
ingest. Afterwards B's store holds exactly what A lets B have of each member (A's own `$everything`, asked
independently, is the yardstick), every resource with A's transmitter Provenance and B's receipt Provenance.
"""

from __future__ import annotations

import io
import json
import os
import signal
from collections import Counter
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Q
from django.utils import timezone

from pdex.extract import SHARED_TYPES
from pdex.models import Member, Resource
from requesting import consents, registry
from requesting.client import PayerClient
from requesting.consent_resource import ConsentTerms, OldCard
from requesting.models import CollectedConsent, MemberLink, PreviousPayer, PullJob, PullMember, PullUnit
from requesting.pull.start import start_pulls
from requesting.pull.steps import source_of
from requesting.schedule import schedule_due_pulls
from tests.builders import make_member
from tests.two_payers import NEW_PLAN, OLD_PLAN, OldMember, OldPayer, old_members, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def old_plan(tmp_path_factory):
    """Payer A, shared by this module's tests: its data never changes except where a test changes it."""
    old = OldPayer(tmp_path_factory.mktemp("old-plan")).prepare().start()
    yield old
    old.stop()


@pytest.fixture
def new_plan(settings, live_server, tmp_path):
    """B's settings, in this process and in its worker's environment."""
    values = {**NEW_PLAN, "FHIR_BASE_URL": f"{live_server.url}/fhir", "P2P_DOWNLOAD_DIR": str(tmp_path / "spool"),
              "P2P_DEFAULT_RETRY_SECONDS": "1"}
    for name, value in values.items():
        setattr(settings, name, value)
    settings.P2P_DEFAULT_RETRY_SECONDS = 1
    return values


def start_worker(celery_worker_process, new_plan, *, concurrency: int = 2, beat: bool = False, **env: str):
    """B's worker: every queue (pull included), B's settings."""
    return celery_worker_process(extra_env={**new_plan, **env}, concurrency=concurrency, beat=beat)


def register_with(old: OldPayer) -> PreviousPayer:
    """B finds A (SMART configuration, CapabilityStatement), registers dynamically, A's admin approves."""
    payer = registry.add_previous_payer(name=OLD_PLAN["PAYER_NAME"], npi=OLD_PLAN["PAYER_NPI"],
                                        fhir_base_url=old.fhir_base)
    assert {"bulk-member-match", "davinci-data-export", "member-match"} <= set(payer.operations)
    registry.register_dynamically(payer, actor="test")
    assert "invalid_client" in registry.check_connection(payer)  # pending at A until its admin approves
    assert old.approve_partners() == 1
    assert registry.check_connection(payer) == "ok"
    return payer


def enroll(old: OldMember, n: int) -> Member:
    """A's member joins B: B's own Patient id, member number and member-id system; same person."""
    name = next((x for x in old.patient["name"] if x.get("use") == "official"), old.patient["name"][0])
    postal = next((a.get("postalCode", "") for a in old.patient.get("address") or []), "")
    return make_member(f"np-{n}", family=name["family"], given=name["given"], birth_date=old.patient["birthDate"],
                       gender=old.patient["gender"], postal_code=postal, member_number=f"NP{n:05d}")


def collect(member: Member, payer: PreviousPayer, policy: str, card: OldCard) -> CollectedConsent:
    today = timezone.localdate()
    return consents.record_consent(
        member=member, payer=payer, terms=ConsentTerms(policy, today, today + timedelta(days=90)),
        scenario="enrollment", coverage_start=today, old_card=card, via="admin", actor="test")


def scenario(old: OldPayer, payer: PreviousPayer) -> dict[str, tuple[Member, OldMember | None]]:
    """Two #sensitive and two #regular consents of A's members (those with the most sensitive data), one of A's
    members without consent, one person who was never A's member."""
    people = sorted(old_members(old), key=lambda m: -m.sensitive)
    assert people[0].sensitive and people[1].sensitive, "the sample has no sensitive data to filter"
    cast = {}
    for n, (role, policy) in enumerate([("sensitive-1", "sensitive"), ("regular-1", "regular"),
                                        ("sensitive-2", "sensitive"), ("regular-2", "regular")]):
        member = enroll(people[n], n)
        collect(member, payer, policy, OldCard(member_id=people[n].member_number,
                                               subscriber_id=people[n].subscriber_id))
        cast[role] = (member, people[n])
    cast["unconsented"] = (enroll(people[4], 4), people[4])
    stranger = make_member("np-stranger", family="Nobody", given=["Never"], birth_date="1981-02-03",
                           member_number="NP99999")
    collect(stranger, payer, "sensitive", OldCard(member_id="M000000000"))
    cast["stranger"] = (stranger, None)
    return cast


def run(job: PullJob, seconds: float = 240) -> PullJob:
    def finished():
        job.refresh_from_db()
        return job.is_finished

    wait_for(finished, f"pull {job.id} to finish", seconds=seconds, every=0.5)
    assert job.status == PullJob.Status.COMPLETED, (job.error, list(job.units.values("step", "status", "error")))
    return job


def allowed_at_old_plan(payer: PreviousPayer, their_id: str) -> set[tuple[str, str]]:
    """What A lets B have of one member, asked independently of the pull: A's own Patient/$everything."""
    client = PayerClient(payer)
    found, url = set(), f"Patient/{their_id}/$everything?_count=500"
    while url:
        response = client.request("GET", url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        for entry in bundle.get("entry") or []:
            resource = entry["resource"]
            if resource["resourceType"] not in SHARED_TYPES and resource["resourceType"] != "Provenance":
                found.add((resource["resourceType"], resource["id"]))
        url = next((link["url"] for link in bundle.get("link") or [] if link["relation"] == "next"), "")
    return found


def held_of(member: Member) -> set[tuple[str, str]]:
    """B's store for one member, B's own Patient and all Provenance aside."""
    rows = (Resource.objects.filter(member=member).exclude(resource_type="Provenance")
            .exclude(resource_type="Patient", fhir_id=member.fhir_id))
    return set(rows.values_list("resource_type", "fhir_id"))


def provenance_targets() -> dict[str, set[str]]:
    """Per agent role (transmitter, custodian): every reference some stored Provenance targets with it."""
    found: dict[str, set[str]] = {"transmitter": set(), "custodian": set()}
    for body in Resource.objects.filter(resource_type="Provenance").values_list("body", flat=True):
        roles = {c.get("code") for a in body.get("agent") or [] for c in a["type"]["coding"]}
        for role in found.keys() & roles:
            found[role] |= {t["reference"] for t in body.get("target") or []}
    return found


def snapshot() -> dict[tuple[str, str], str]:
    """B's store as content: bodies without the instants of receipt, A's transmitter Provenance by its targets."""
    found = {}
    for resource_type, fhir_id, body in Resource.objects.values_list("resource_type", "fhir_id", "body"):
        body = {**body, "meta": {k: v for k, v in (body.get("meta") or {}).items() if k != "lastUpdated"}}
        body.pop("recorded", None)
        if resource_type == "Provenance" and any(c.get("code") == "transmitter" for a in body.get("agent") or []
                                                 for c in a["type"]["coding"]):
            fhir_id = "transmitter:" + ",".join(sorted(t["reference"] for t in body["target"]))
            body.pop("id")
        found[(resource_type, fhir_id)] = json.dumps(body, sort_keys=True)
    return found


def assert_exactly_what_was_allowed(old: OldPayer, payer: PreviousPayer, cast) -> None:
    source = source_of(PullJob(previous_payer=payer))
    for role, (member, old_member) in cast.items():
        held = held_of(member)
        if old_member is None or role == "unconsented":
            assert held == set(), f"{role}: B holds data A should never have sent"
            continue
        theirs = allowed_at_old_plan(payer, old_member.fhir_id)
        allowed = {(kind, source.local_id(their_id)) for kind, their_id in theirs}
        assert held == allowed, f"{role}: {len(held - allowed)} too many, {len(allowed - held)} missing"
        sensitive = Resource.objects.filter(member=member, sensitive=True).count()
        if role.startswith("regular"):
            assert sensitive == 0, f"{role}: sensitive data under a #regular consent"
        elif role == "sensitive-1":
            assert sensitive > 0, "the #sensitive member's sensitive data did not come"
    targets = provenance_targets()
    received = Resource.objects.exclude(resource_type="Provenance").exclude(fhir_id__startswith="np-")
    for kind, fhir_id in received.values_list("resource_type", "fhir_id"):
        assert f"{kind}/{fhir_id}" in targets["custodian"], f"{kind}/{fhir_id} has no receipt Provenance"
        assert f"{kind}/{fhir_id}" in targets["transmitter"], f"{kind}/{fhir_id} has no transmitter Provenance"


def test_two_payers_exchange_end_to_end_and_a_follow_up_pull_brings_only_what_changed(
        old_plan, new_plan, celery_worker_process, tmp_path):
    start_worker(celery_worker_process, new_plan)
    payer = register_with(old_plan)
    cast = scenario(old_plan, payer)

    [job] = start_pulls(payer, trigger=PullJob.Trigger.COMMAND)
    run(job)
    outcomes = dict(job.pull_members.values_list("member__fhir_id", "outcome"))
    assert outcomes == {cast[r][0].fhir_id: PullMember.Outcome.MATCHED
                        for r in ("sensitive-1", "regular-1", "sensitive-2", "regular-2")} | {
        "np-stranger": PullMember.Outcome.NO_MATCH}
    assert (job.matched, job.no_match, job.since, job.invalid) == (4, 1, None, {})
    assert PullMember.objects.get(job=job, outcome="nomatch").action.startswith("Not found")
    assert sum(job.ingested.values()) > 500 and job.ingested == job.received
    assert_exactly_what_was_allowed(old_plan, payer, cast)
    first_store = Resource.objects.count()

    # Meanwhile at A: one Observation of a #sensitive member corrected, one new Encounter of a #regular member,
    # one change for the member who gave B no consent. A's own ingest takes them in.
    [(observation,)] = old_plan.sql(
        "SELECT r.body FROM pdex_resource r JOIN pdex_member m ON m.id = r.member_id WHERE m.fhir_id = %s"
        " AND r.resource_type = 'Observation' AND NOT r.sensitive AND r.service_start > now() - interval '4 years'"
        " ORDER BY r.fhir_id LIMIT 1", [cast["sensitive-1"][1].fhir_id])
    observation["status"] = "amended"
    regular, unconsented = cast["regular-1"][1].fhir_id, cast["unconsented"][1].fhir_id
    encounter = {"resourceType": "Encounter", "id": "late-visit", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": f"Patient/{regular}"},
                 "period": {"start": (timezone.now() - timedelta(days=3)).isoformat()}}
    other = {**encounter, "id": "late-visit-other", "subject": {"reference": f"Patient/{unconsented}"}}
    changed = tmp_path / "changed.ndjson"
    now = timezone.now().isoformat()
    changed.write_text("\n".join(json.dumps({**r, "meta": {**r.get("meta", {}), "lastUpdated": now}})
                                 for r in (observation, encounter, other)) + "\n")
    old_plan.manage("load_ndjson", str(changed), "--no-progress", "--workers", "1")

    # The stranger, never matched, is asked again with nothing to go on but a full pull; the others follow up.
    full, follow_up = start_pulls(payer, trigger=PullJob.Trigger.SCHEDULE)
    run(full), run(follow_up)
    assert (full.since, full.members, full.no_match) == (None, 1, 1)
    assert follow_up.since == job.export_transaction_time
    assert follow_up.ingested.get("Observation") == 1 and follow_up.ingested.get("Encounter") == 1
    new_rows = Resource.objects.count() - first_store
    # Only the new Encounter, its receipt, and A's transmitter Provenance of this export are new rows; the
    # corrected Observation replaced its earlier copy, and what A sent again unchanged was not stored again.
    transmitter = follow_up.ingested.get("Provenance", 0)
    assert new_rows == 2 + transmitter, (new_rows, follow_up.ingested, follow_up.unchanged)
    local = source_of(follow_up).local_id(observation["id"])
    assert Resource.objects.get(resource_type="Observation", fhir_id=local).body["status"] == "amended"
    assert not Resource.objects.filter(fhir_id=source_of(follow_up).local_id("late-visit-other")).exists()
    assert_exactly_what_was_allowed(old_plan, payer, cast)


def test_a_puller_killed_mid_download_resumes_and_ends_with_the_store_an_undisturbed_pull_leaves(
        old_plan, new_plan, celery_worker_process, settings):
    env = {"JOB_LEASE_SECONDS": "3", "JOB_SWEEP_SECONDS": "1", "P2P_INGEST_BATCH_LINES": "10"}
    settings.JOB_LEASE_SECONDS = 3
    payer = register_with(old_plan)
    cast = scenario(old_plan, payer)
    worker = start_worker(celery_worker_process, new_plan, concurrency=1, **env)
    [job] = start_pulls(payer)
    files = PullUnit.objects.filter(job=job, step=PullUnit.Step.FILE)

    def mid_download() -> bool:
        return (files.filter(status=PullUnit.Status.DONE).count() >= 2
                and files.filter(status=PullUnit.Status.RUNNING).exists())

    wait_for(mid_download, "the puller to be mid-download", every=0.02)
    for pid in [*worker.child_pids(), worker.process.pid]:  # the whole worker, its reserved messages with it
        os.kill(pid, signal.SIGKILL)
    worker.process.wait()
    job.refresh_from_db()
    assert job.status == PullJob.Status.RUNNING and files.exclude(status=PullUnit.Status.DONE).exists()

    start_worker(celery_worker_process, new_plan, beat=True, **env)  # beat: the sweep finds the lost lease
    run(job)
    assert files.filter(attempts__gt=1).exists(), "no file was interrupted"
    assert_exactly_what_was_allowed(old_plan, payer, cast)
    disturbed, counts = snapshot(), (job.received, job.ingested)

    # The same pull, undisturbed, into a store without A's data.
    Resource.objects.exclude(Q(resource_type="Patient") & Q(fhir_id__startswith="np-")).delete()
    CollectedConsent.objects.update(last_transaction_time=None, next_pull_at=timezone.now())
    [again] = start_pulls(payer, full=True)
    run(again)
    assert not PullUnit.objects.filter(job=again, attempts__gt=1).exists()
    assert snapshot() == disturbed
    assert (again.received, again.ingested) == counts


def test_a_revocation_between_two_scheduled_pulls_stops_the_second_one_for_that_member(
        old_plan, new_plan, celery_worker_process):
    [(began,)] = old_plan.sql("SELECT now()")
    start_worker(celery_worker_process, new_plan)
    payer = register_with(old_plan)
    cast = scenario(old_plan, payer)
    [first] = schedule_due_pulls()  # every consent is due the moment it is recorded
    run(first)
    leaving, _ = cast["regular-1"]
    staying = [cast[r][0] for r in ("sensitive-1", "sensitive-2", "regular-2")]
    held = held_of(leaving)
    assert held
    consent = CollectedConsent.objects.get(member=leaving)
    consents.revoke_consent(consent, reason="the member called to withdraw", actor="test")
    assert consent.next_pull_at is None

    week_later = timezone.now() + timedelta(days=8)
    second = schedule_due_pulls(now=week_later)
    asked = Counter(m for job in second for m in job.pull_members.values_list("member_id", flat=True))
    assert leaving.pk not in asked and all(asked[m.pk] == 1 for m in staying)
    for job in second:
        run(job)
    # A heard of the member once (the first pull), never again; B took in nothing more of them.
    bundles = old_plan.sql("SELECT e.bundle::text FROM matching_matchentry e JOIN matching_matchjob j"
                           " ON j.id = e.job_id WHERE j.created_at >= %s", [began])
    assert sum(f'"Patient/{leaving.fhir_id}"' in text for (text,) in bundles) == 1
    assert held_of(leaving) == held


def test_p2p_pull_runs_a_one_member_pull_here_by_member_match_and_patient_export(old_plan, new_plan):
    """No worker of B's: `manage.py p2p_pull` runs the pull in its own process, through the same steps."""
    payer = register_with(old_plan)
    person = sorted(old_members(old_plan), key=lambda m: -m.sensitive)[5]
    member = enroll(person, 7)
    collect(member, payer, "sensitive", OldCard(member_id=person.member_number))
    out = io.StringIO()
    call_command("p2p_pull", "--payer", payer.npi, "--no-progress", stdout=out)
    job = PullJob.objects.get(previous_payer=payer)
    assert job.status == PullJob.Status.COMPLETED and job.single and job.matched == 1
    [(kind,)] = old_plan.sql("SELECT kind FROM exports_exportjob WHERE id::text = %s",
                             [job.export_status_url.rsplit("/", 1)[-1]])
    assert kind == "patient-export"  # A ran a Patient/$export of the one member its $member-match found
    summary = out.getvalue()
    assert "1 matched" in summary and "Encounter" in summary
    their_ids = allowed_at_old_plan(payer, person.fhir_id)
    assert held_of(member) == {(kind, source_of(job).local_id(i)) for kind, i in their_ids}
    assert MemberLink.objects.get(member=member).their_umb.startswith("UMB-")
