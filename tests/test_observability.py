"""What operators watch (docs/operations.md): /metrics in Prometheus format, JSON logs carrying a request id."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from exports import jobs
from exports.models import ExportJob
from pdex import logcontext
from tests.builders import consent_for, days_ago, encounter, make_member, match_group, store

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client: Client | None = None, **headers) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted labels: value}}."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture(autouse=True)
def _close_stream_connection():
    from exports.writer import close_stream_connection

    yield
    close_stream_connection()  # the chunk writer streams on a connection of its own


def exported_world(partner, members: int = 3):
    people = []
    for k in range(members):
        member = make_member(f"m{k}")
        for n in range(k + 1):
            store(encounter(f"m{k}-e{n}", f"m{k}", days_ago(20 + n)), member)
        consent_for(member, partner)
        people.append(member)
    return match_group(partner, people)


def run_export(job: ExportJob) -> ExportJob:
    """Every chunk in this process, then the finalize (what the export and control queues do)."""
    states = [jobs.run_chunk(chunk_id).state for chunk_id in jobs.plan(job.id)]
    if "last" in states:
        jobs.finalize(job.id)
    job.refresh_from_db()
    return job


def test_metrics_count_the_exported_resources_per_type(partner, api, settings, tmp_path):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    group = exported_world(partner)
    before = scrape()
    response = api.post(f"/fhir/Group/{group.pk}/$davinci-data-export", data=json.dumps({"resourceType": "Parameters"}),
                        content_type="application/fhir+json", HTTP_PREFER="respond-async")
    assert response.status_code == 202
    job = run_export(ExportJob.objects.get(pk=response["Content-Location"].rsplit("/", 1)[1]))
    assert job.status == ExportJob.Status.COMPLETED and job.counts["Encounter"] == 6

    after = scrape()
    resources = after["pdex_export_resources_total"]
    assert resources[(("resource_type", "Encounter"),)] == 6
    assert resources[(("resource_type", "Patient"),)] == 3
    assert {labels[0][1] for labels in resources} == set(job.counts)
    assert after["pdex_export_bytes_total"][(("resource_type", "Encounter"),)] == job.sizes["Encounter"] > 0
    assert after["pdex_jobs"][(("kind", "export"), ("priority", "normal"), ("state", "completed"))] == 1
    assert after["pdex_jobs_finished_total"][(("kind", "export"), ("outcome", "completed"))] == 1
    assert after["pdex_job_success_ratio"][(("kind", "export"),)] == 1.0
    assert after["pdex_job_within_deadline_ratio"][(("kind", "export"),)] == 1.0
    assert after["pdex_job_unit_duration_seconds_count"][(("kind", "export"),)] == job.progress_total
    assert set(after["pdex_queue_depth"]) >= {(("queue", kind),) for kind in ("export", "match", "control")}
    # The kick-off is timed under its route's name, never its path.
    kickoff = (("method", "POST"), ("route", "davinci-data-export"), ("status", "202"))
    counted = after["pdex_http_request_duration_seconds_count"]
    assert counted[kickoff] == before.get("pdex_http_request_duration_seconds_count", {}).get(kickoff, 0) + 1
    assert not any(group.pk in value for labels in counted for _, value in labels)


def test_metrics_need_the_token_or_an_allowed_network(settings):
    settings.METRICS_TOKEN = "s3cr3t-metrics-token-for-tests"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    scrape(HTTP_AUTHORIZATION="Bearer s3cr3t-metrics-token-for-tests")
    settings.METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 403
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    scrape(Client(REMOTE_ADDR="203.0.113.9"))


def test_token_requests_are_counted_by_outcome(client):
    before = scrape().get("pdex_token_requests_total", {})
    response = client.post("/oauth/token", data="grant_type=client_credentials",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code in (400, 401)
    error = response.json()["error"]
    after = scrape()["pdex_token_requests_total"]
    labels = (("error", error), ("outcome", "refused"))
    assert after[labels] == before.get(labels, 0) + 1


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                lines.append(json.loads(line[start:]))
            except ValueError:
                continue
    return lines


@pytest.fixture
def web_log():
    """What the configured console handler (JSON formatter, context filter) writes, into a buffer."""
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(console.formatter)
    for log_filter in console.filters:
        handler.addFilter(log_filter)
    logging.getLogger().addHandler(handler)
    yield buffer
    logging.getLogger().removeHandler(handler)


def test_a_kick_off_and_the_chunks_it_starts_log_one_request_id(partner, api, settings, tmp_path, web_log,
                                                                celery_worker_process):
    settings.EXPORT_STORAGE_URL = f"file://{tmp_path}/exports"
    group = exported_world(partner, members=2)
    worker = celery_worker_process(extra_env={"EXPORT_CHUNK_MEMBERS": "1"})
    request_id = "partner-req-0123456789"
    response = api.post(f"/fhir/Group/{group.pk}/$davinci-data-export", data=json.dumps({"resourceType": "Parameters"}),
                        content_type="application/fhir+json", HTTP_PREFER="respond-async", HTTP_X_REQUEST_ID=request_id)
    assert response.status_code == 202 and response[logcontext.HEADER] == request_id
    job = ExportJob.objects.get(pk=response["Content-Location"].rsplit("/", 1)[1])
    assert job.request_id == request_id
    began = time.monotonic()
    while not ExportJob.objects.get(pk=job.pk).is_finished and time.monotonic() - began < 120:
        time.sleep(0.2)
    assert ExportJob.objects.get(pk=job.pk).status == ExportJob.Status.COMPLETED

    served = json_lines(web_log.getvalue())
    queued = [line for line in served if line.get("logger") == "exports.jobs.start"]
    assert queued and queued[0]["request_id"] == request_id and queued[0]["job"] == str(job.pk)
    worked = json_lines(worker.output())
    chunks = [line for line in worked if line.get("logger") == "pdex.jobs.engine" and "done in" in line["message"]
              and line.get("job") == str(job.pk)]
    assert len(chunks) == job.chunks.count()
    assert {line["request_id"] for line in chunks} == {request_id}
    # The planning task got it from its message's header.
    assert any(line.get("task") == "exports.plan_export" and line["request_id"] == request_id for line in worked)


def test_a_request_id_is_made_up_when_the_caller_sends_none_or_a_strange_one(client):
    made = client.get("/healthz")[logcontext.HEADER]
    assert len(made) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="a b\n<script>")[logcontext.HEADER] != "a b\n<script>"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a9c2e")[logcontext.HEADER] == "lb-7f3a9c2e"
