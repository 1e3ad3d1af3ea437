"""$davinci-data-export end to end: real HTTP (live_server), a real Celery worker on Redis, file and S3 storage.

token (SMART Backend Services: discovery, signed assertion, token endpoint) → [$bulk-member-match →] kick-off →
poll the status URL → download every file with the same token → check the P2P rules on every line
(tests/export_world.py says which resource each rule keeps or withholds).
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
import requests

from consent.models import Consent
from consent.services import revoke
from exports.models import ExportJob
from matching.models import MemberMatchGroup
from tests.builders import (
    EXAMPLE_PARTNER_NPI,
    EXAMPLE_PAYER_NPI,
    agreement_signed,
    bulk_match_request,
    consent_for,
    example_members,
    match_group,
)
from tests.conftest import issue_token
from tests.export_world import World, assert_p2p_export, build_world, member_data

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

P2P = "hl7.fhir.us.davinci-pdex#payertopayer"
# The worker plans the jobs: one member per chunk, so an export of a few members is already many chunks.
WORKER_ENV = {"EXPORT_CHUNK_MEMBERS": "1"}
POLL_LIMIT_SECONDS = 180


class Client:
    """A partner's HTTP client over the live server."""

    def __init__(self, base: str, token: str):
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def kick_off(self, path: str, parameters: list[dict] | None = None, prefer: str = "respond-async",
                 method: str = "POST") -> requests.Response:
        headers = {"Accept": "application/fhir+json", "Prefer": prefer}
        if method == "GET":
            return self.session.get(f"{self.base}/{path}", headers=headers, timeout=30)
        body = {"resourceType": "Parameters", "parameter": parameters or []}
        return self.session.post(f"{self.base}/{path}", json=body,
                                 headers={**headers, "Content-Type": "application/fhir+json"}, timeout=30)

    def wait(self, status_url: str) -> requests.Response:
        """Poll as a client should: at the pace Retry-After asks for, until the job is no longer running."""
        deadline = time.monotonic() + POLL_LIMIT_SECONDS
        while time.monotonic() < deadline:
            response = self.session.get(status_url, headers={"Accept": "application/json"}, timeout=30)
            if response.status_code not in (202, 429):
                return response
            if response.status_code == 202:
                assert response.headers["X-Progress"]
            time.sleep(float(response.headers.get("Retry-After", "1")))
        raise AssertionError("the export did not finish in time")

    def download(self, manifest: dict, kind: str = "output") -> list[bytes]:
        lines: list[bytes] = []
        for item in manifest[kind]:
            response = self.session.get(item["url"], timeout=60)
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("application/fhir+ndjson")
            file_lines = response.content.splitlines()
            assert len(file_lines) == item["count"]
            assert all(json.loads(line)["resourceType"] == item["type"] for line in file_lines)
            lines.extend(file_lines)
        return lines


def smart_partner(name: str, npi: str = "1999999991"):
    """A partner registered with a public key, as `manage.py create_partner` does, and its private key."""
    from pdex import partners
    from tests.fixtures.smart import new_client_key

    private, public = new_client_key("ES384")
    partner = partners.create_partner(name=name, jwks=public, npi=npi, status="active", registered_via="command",
                                      agreement_date=agreement_signed(),
                                      scope="system/*.read http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/"
                                            "BulkMemberMatch")
    return partner, private


def smart_token(fhir_base: str, partner, private_jwk: dict, scopes: str) -> str:
    """A bearer token the way a partner gets one: discovery, a signed client assertion, the token endpoint."""
    from pdex.auth import client as smart_client

    token_url = smart_client.discover(fhir_base)["token_endpoint"]
    response = smart_client.request_token(token_url, partner.client_id, private_jwk, scopes)
    assert response["expires_in"] <= 300
    return response["access_token"]


def export_and_download(client: Client, world, parameters=None) -> tuple[dict, list[bytes], list[bytes]]:
    response = client.kick_off(f"Group/{world.group.pk}/$davinci-data-export", parameters)
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    done = client.wait(status_url)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith(f"/Group/{world.group.pk}/$davinci-data-export")
    return manifest, client.download(manifest), client.download(manifest, "error")


def test_davinci_data_export_end_to_end(fhir_base, file_storage, celery_worker_process):
    partner, private_jwk = smart_partner("New Plan")
    world = build_world(partner)
    celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, smart_token(fhir_base, partner, private_jwk, "system/*.read"))
    manifest, lines, errors = export_and_download(client, world, [{"name": "exportType", "valueCanonical": P2P}])
    resources = assert_p2p_export(lines, world)
    assert {item["type"] for item in manifest["output"]} >= {
        "Patient", "Encounter", "Observation", "Condition", "ExplanationOfBenefit", "DocumentReference",
        "Organization", "Practitioner", "Provenance"}
    assert len(resources) == len(lines)
    outcomes = [json.loads(line) for line in errors]
    assert any("excluded" in o["issue"][0]["diagnostics"] for o in outcomes)
    assert not any(world.members["revoked"].fhir_id in line.decode() for line in errors)
    job = ExportJob.objects.get(group=world.group)
    assert job.status == ExportJob.Status.COMPLETED and job.progress_done == job.progress_total > 1


def test_export_type_absent_and_an_old_since_are_noted(fhir_base, file_storage, partner, celery_worker_process):
    world = build_world(partner)
    celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, issue_token(partner))
    _, lines, errors = export_and_download(client, world, [{"name": "_type", "valueString": "Patient,Encounter"},
                                                           {"name": "_since", "valueInstant": "2000-01-01T00:00:00Z"}])
    notes = [json.loads(line)["issue"][0] for line in errors]
    assert any(n["severity"] == "information" and "exportType" in n["diagnostics"] for n in notes)
    assert any(n["severity"] == "information" and n.get("expression") == ["_since"] for n in notes)  # raised
    types = {json.loads(line)["resourceType"] for line in lines}
    assert types == {"Patient", "Encounter"}  # _type is strict: no Provenance unless asked for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_storage(settings, monkeypatch):
    """A moto S3 server in this process; the worker subprocess reaches it through AWS_ENDPOINT_URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
        monkeypatch.setenv(name, value)
    bucket = f"exports-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    settings.AWS_ENDPOINT_URL = endpoint
    settings.EXPORT_STORAGE_URL = f"s3://{bucket}/p2p"
    yield boto3.client("s3", endpoint_url=endpoint), bucket
    server.stop()


def test_export_to_s3(fhir_base, s3_storage, partner, celery_worker_process):
    s3, bucket = s3_storage
    world = build_world(partner)
    celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, issue_token(partner))
    manifest, lines, _ = export_and_download(client, world, [{"name": "exportType", "valueString": P2P}])
    assert_p2p_export(lines, world)
    job = ExportJob.objects.get(group=world.group)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(key.startswith(f"p2p/{partner.pk}/{job.id}/") for key in keys)
    head = s3.head_object(Bucket=bucket, Key=keys[0])
    assert head["ServerSideEncryption"] == "AES256"
    assert len(keys) == len(manifest["output"]) + len(manifest["error"])


def test_cancel_right_after_kick_off_stops_it_and_removes_files(fhir_base, file_storage, partner, settings,
                                                       celery_worker_process):
    world = build_world(partner)
    client = Client(fhir_base, issue_token(partner))
    response = client.kick_off(f"Group/{world.group.pk}/$davinci-data-export")
    status_url = response.headers["Content-Location"]
    celery_worker_process(extra_env=WORKER_ENV)  # the job was queued before any worker ran: the cancel races it
    assert client.session.delete(status_url, timeout=30).status_code == 202
    assert client.session.get(status_url, timeout=30).status_code == 404
    job = ExportJob.objects.get(group=world.group)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and job.chunks.filter(status="running").exists():
        time.sleep(0.5)
    from pdex.jobs.models import OutputFile
    from pdex.jobs.tasks import expire_outputs

    expire_outputs()  # the beat sweep removes anything a chunk finished writing after the cancel
    job.refresh_from_db()
    assert job.status == ExportJob.Status.CANCELLED
    assert not OutputFile.objects.filter(job_id=job.id).exists()


def test_too_many_running_exports_answer_429(fhir_base, file_storage, partner, settings):
    settings.EXPORT_MAX_RUNNING_JOBS = 1
    world = build_world(partner)
    client = Client(fhir_base, issue_token(partner))
    assert client.kick_off(f"Group/{world.group.pk}/$davinci-data-export").status_code == 202
    refused = client.kick_off(f"Group/{world.group.pk}/$davinci-data-export")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["resourceType"] == "OperationOutcome"


def test_kick_off_refusals(fhir_base, file_storage, partner, make_partner):
    world = build_world(partner)
    client = Client(fhir_base, issue_token(partner))
    path = f"Group/{world.group.pk}/$davinci-data-export"
    other = Client(fhir_base, issue_token(make_partner("Another Plan")))
    assert other.kick_off(path).status_code == 404  # another partner's Group does not exist for them
    assert client.kick_off("Group/nope/$davinci-data-export").status_code == 404
    assert client.kick_off(path, prefer="").status_code == 400
    unknown = client.kick_off(path, [{"name": "exportType", "valueString": "hl7.fhir.us.davinci-atr"}])
    assert unknown.status_code == 400
    nomatch = match_group(partner, [world.members["sens"]], code=MemberMatchGroup.Code.NO_MATCH)
    refused = client.kick_off(f"Group/{nomatch.pk}/$davinci-data-export")
    assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome"
    narrow = Client(fhir_base, issue_token(partner, "system/Group.rs system/Patient.rs"))
    assert narrow.kick_off(path, [{"name": "_type", "valueString": "Patient,Encounter"}]).status_code == 403
    assert not ExportJob.objects.exists()
    from pdex.models import AuditEvent

    refused = AuditEvent.objects.filter(action="export", outcome=AuditEvent.Outcome.MINOR_FAILURE)
    statuses = ["404 not-found", "404 not-found", "400 invalid", "400 not-supported", "400 business-rule",
                "403 forbidden"]
    assert sorted(refused.values_list("reason", flat=True)) == sorted(statuses)


def test_group_export_get_and_patient_export(fhir_base, file_storage, partner, celery_worker_process):
    world = build_world(partner)
    celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, issue_token(partner))
    response = client.kick_off(f"Group/{world.group.pk}/$export?_type=Patient", method="GET")
    assert response.status_code == 202, response.text
    manifest = client.wait(response.headers["Content-Location"]).json()
    exported = [json.loads(line) for line in client.download(manifest)]
    patients = {r["id"] for r in exported if r["resourceType"] == "Patient"}
    assert patients == {world.members["sens"].fhir_id, world.members["reg"].fhir_id}

    outsider = world.members["outsider"]
    consent_for(outsider, partner)  # matched by $member-match some other day: Patient/$export includes them
    response = client.kick_off("Patient/$export", [
        {"name": "_type", "valueString": "Patient"},
        {"name": "patient", "valueReference": {"reference": f"Patient/{outsider.fhir_id}"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/{world.members['revoked'].fhir_id}"}}])
    assert response.status_code == 202, response.text
    manifest = client.wait(response.headers["Content-Location"]).json()
    lines = [json.loads(line) for line in client.download(manifest)]
    assert {r["id"] for r in lines if r["resourceType"] == "Patient"} == {outsider.fhir_id}


def test_system_export_holds_exactly_what_the_match_groups_may_receive_now(fhir_base, file_storage, partner,
                                                                         make_partner, celery_worker_process):
    """`$export`: the members of the caller's match Groups whose consent can be complied with now, under the
    P2P rules — not a member it holds a consent for outside any Group, not another partner's members."""
    world = build_world(partner)
    consent_for(world.members["outsider"], partner)  # consented by a $member-match, but in no match Group
    other = make_partner("Other Plan")
    build_world(other)
    celery_worker_process(extra_env=WORKER_ENV)
    client = Client(fhir_base, issue_token(partner))
    response = client.kick_off("$export", method="GET")
    assert response.status_code == 202, response.text
    done = client.wait(response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["request"].endswith("/fhir/$export")
    lines = client.download(manifest)
    resources = assert_p2p_export(lines, world)
    patients = {ref.split("/")[1] for ref in resources if ref.startswith("Patient/")}
    assert patients == {world.members["sens"].fhir_id, world.members["reg"].fhir_id}
    errors = [json.loads(line) for line in client.download(manifest, "error")]
    assert any("consent revoked" in e["issue"][0]["diagnostics"] for e in errors)  # re-checked at planning
    job = ExportJob.objects.get(partner=partner, kind=ExportJob.Kind.SYSTEM)
    assert job.member_count == 2


def test_system_export_refusals(fhir_base, file_storage, partner, api_for):
    member_match_only = api_for(partner, "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match")
    assert member_match_only.get("/fhir/$export", HTTP_PREFER="respond-async").status_code == 403
    api = api_for(partner)
    patient = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/x"}}]}
    response = api.post("/fhir/$export", patient, format="json", HTTP_PREFER="respond-async")
    assert response.status_code == 400 and "system-level" in response.json()["issue"][0]["diagnostics"]
    future = api.get("/fhir/$export?_since=2057-01-01T00:00:00%2B05:00", HTTP_PREFER="respond-async")
    assert future.status_code == 400
    assert api.get("/fhir/$export").status_code == 400  # no Prefer: respond-async


# --- the whole exchange: $bulk-member-match first, then the export of the Group it produced ----------------

def test_bulk_member_match_then_export(fhir_base, file_storage, settings, celery_worker_process):
    plan = {"PAYER_NPI": EXAMPLE_PAYER_NPI, "PAYER_NAME": "Old Health Plan",
            "MEMBER_ID_SYSTEM": "http://example.org/old-payer"}
    for name, value in plan.items():
        setattr(settings, name, value)
    new_plan, private_jwk = smart_partner("New Health Plan", npi=EXAMPLE_PARTNER_NPI)
    members = example_members()
    celery_worker_process(extra_env={**WORKER_ENV, **plan})
    client = Client(fhir_base, smart_token(
        fhir_base, new_plan, private_jwk,
        "system/*.read http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch"))

    request = bulk_match_request()  # members 1–3 consent now; member 4's consent has expired
    response = client.session.post(f"{fhir_base}/Group/$bulk-member-match", json=request, timeout=30, headers={
        "Prefer": "respond-async", "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
    assert response.status_code == 202, response.text
    matched = client.wait(response.headers["Content-Location"])
    assert matched.status_code == 200, matched.text
    group = MemberMatchGroup.objects.get(partner=new_plan, code=MemberMatchGroup.Code.MATCH)
    in_group = set(group.members.values_list("fhir_id", flat=True))
    assert len(in_group) >= 2

    # Between the match and the export, one matched member revokes their consent.
    revoked_id = sorted(in_group)[0]
    revoke(Consent.objects.get(member__fhir_id=revoked_id, partner=new_plan), "member asked us to stop")
    world = World(group=group, members=members)
    for fhir_id, member in members.items():
        visible = fhir_id in in_group and fhir_id != revoked_id
        policy = Consent.objects.filter(member=member, partner=new_plan).values_list("policy", flat=True).first()
        member_data(world, fhir_id.replace("-", ""), member, visible=visible, regular=policy == "regular")

    _, lines, errors = export_and_download(client, world, [{"name": "exportType", "valueCode": P2P}])
    assert_p2p_export(lines, world)
    assert any("excluded" in json.loads(line)["issue"][0]["diagnostics"] for line in errors)


def test_metadata_lists_the_export_operations(client):
    statement = client.get("/fhir/metadata").json()
    operations = {(r["type"], op["name"], op["definition"]) for r in statement["rest"][0]["resource"]
                  for op in r.get("operation", [])}
    assert {("Group", "davinci-data-export",
             "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"),
            ("Group", "export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"),
            ("Patient", "export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export")} <= operations
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"} in \
        statement["rest"][0]["operation"]
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in statement["instantiates"]
