"""`$import`: our own systems' asynchronous bulk import of NDJSON files named by URL (our file storage, S3), on
the job engine with a real worker, through the same ingest path as load_ndjson."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from rest_framework.test import APIClient

from pdex.models import Member, Resource
from pdex.write import access
from tests.builders import observation, patient
from tests.test_export_e2e import s3_storage  # noqa: F401 - the moto S3 server fixture
from tests.test_member_identity import ana, ana_coverage

FHIR = "application/fhir+json"


def kick_off(api: APIClient, *inputs: tuple[str, str]):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueString": "application/fhir+ndjson"},
        *({"name": "input", "part": [{"name": "type", "valueString": kind}, {"name": "url", "valueUri": url}]}
          for kind, url in inputs)]}
    return api.post("/fhir/$import", data=json.dumps(body), content_type=FHIR, HTTP_PREFER="respond-async")


def ndjson(*resources: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in resources).encode()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_import_of_files_in_our_storage_and_in_s3_loads_them_through_the_ingest_path(
        tmp_path, settings, s3_storage, celery_worker_process):  # noqa: F811 - the fixture
    s3, bucket = s3_storage
    folder = tmp_path / "imports"
    folder.mkdir()
    sources = [f"file://{folder}", f"s3://{bucket}/inbound"]
    settings.IMPORT_SOURCES = sources
    celery_worker_process(extra_env={"IMPORT_SOURCES": ",".join(sources)}, kinds="control,pull")
    (folder / "Patient.ndjson").write_bytes(ndjson(ana(), patient("p-two")) + b"{not json\n")
    with gzip.open(folder / "Coverage.ndjson.gz", "wb") as handle:
        handle.write(ndjson(ana_coverage()))
    s3.put_object(Bucket=bucket, Key="inbound/Observation.ndjson",
                  Body=ndjson(observation("o-imp", "p-two", "2025-06-01")))
    client = access.register_internal_client("enrollment feed", source_format="x12837")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access.issue_token(client).token}")

    response = kick_off(api, ("Patient", f"file://{folder}/Patient.ndjson"),
                        ("Coverage", f"file://{folder}/Coverage.ndjson.gz"),
                        ("Observation", f"s3://{bucket}/inbound/Observation.ndjson"))
    assert response.status_code == 202, response.content
    status_url = response["Content-Location"]
    deadline = time.monotonic() + 120
    while (polled := api.get(status_url)).status_code == 202 and time.monotonic() < deadline:
        assert polled["X-Progress"].endswith("files")
        time.sleep(0.5)
    assert polled.status_code == 200, polled.content
    result = polled.json()
    assert [o["count"] for o in result["output"]] == [2, 1, 1]
    assert result["counts"] == {"Coverage": 1, "Observation": 1, "Patient": 2}
    [error] = result["error"]
    assert error["count"] == 1 and "not JSON" in error["outcome"]["issue"][0]["diagnostics"]
    # The same extraction as load_ndjson: member link, member identity from Coverage, the source format.
    assert Member.objects.get(fhir_id="p-ana").member_number == "A77001234"
    observation_row = Resource.objects.get(fhir_id="o-imp")
    assert (observation_row.member.fhir_id, observation_row.source_format) == ("p-two", "x12837")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {access.issue_token(access.register_internal_client('b')).token}")
    assert other.get(status_url).status_code == 404  # another client's import


def test_an_input_outside_our_import_sources_or_a_partners_token_is_refused(db, settings, tmp_path, partner, api):
    settings.IMPORT_SOURCES = [f"file://{tmp_path}/imports"]
    client = access.register_internal_client("feed")
    writer = APIClient()
    writer.credentials(HTTP_AUTHORIZATION=f"Bearer {access.issue_token(client).token}")
    assert kick_off(writer, ("Patient", "file:///etc/passwd")).status_code == 400
    typed_oddly = {"resourceType": "Parameters", "parameter": [{"name": "input", "part": [
        {"name": "type", "valueCoding": {"code": "Patient"}}, {"name": "url", "valueUri": "file:///x"}]}]}
    assert writer.post("/fhir/$import", data=json.dumps(typed_oddly), content_type=FHIR,
                       HTTP_PREFER="respond-async").status_code == 400
    assert kick_off(writer, ("Patient", f"file://{tmp_path}/imports/../secrets.ndjson")).status_code == 400
    assert kick_off(writer, ("Patient", f"file://{tmp_path}/imports/Patient.ndjson")).status_code == 202
    no_prefer = writer.post("/fhir/$import", data=json.dumps({"resourceType": "Parameters"}), content_type=FHIR)
    assert no_prefer.status_code == 400
    assert kick_off(api, ("Patient", f"file://{tmp_path}/imports/Patient.ndjson")).status_code == 403
