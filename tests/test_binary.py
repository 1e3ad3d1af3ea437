"""Binary attachments: written with their DocumentReference, exported inside it as an absolute URL that downloads
with the partner's token, refused without it and to any partner who may not see the DocumentReference."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class

from exports.provenance import SOURCE_FROM
from pdex.write import access, bundle
from tests.builders import consent_for, days_ago, document, make_member, match_group
from tests.conftest import issue_token
from tests.test_export_e2e import WORKER_ENV, Client

PDF = b"%PDF-1.4 prior authorization letter"


def write(*resources: dict) -> None:
    client = access.register_internal_client("document system", source_format="image")
    writer = access.Writer(name=client.name, granted=("system/*.write",), source_format=client.source_format)
    entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    result = bundle.apply_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries}, writer)
    assert all(o.status_code < 300 for o in result.outcomes), result.outcomes


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_document_pointing_at_a_binary_is_exported_with_a_url_the_partners_token_downloads(
        fhir_base, file_storage, make_partner, celery_worker_process):
    celery_worker_process(extra_env=WORKER_ENV)
    member, other = make_member("p-doc"), make_member("p-else")
    partner, outsider = make_partner("New Plan"), make_partner("Other Plan")
    consent_for(member, partner)
    consent_for(other, outsider)
    group = match_group(partner, [member])
    letter = document("doc-letter", "p-doc", days_ago(20))
    letter["content"] = [{"attachment": {"contentType": "application/pdf", "url": "Binary/bin-letter"}}]
    sensitive = document("doc-sens", "p-doc", days_ago(20))
    sensitive["meta"]["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "R"}]
    sensitive["content"] = [{"attachment": {"contentType": "application/pdf", "url": "Binary/bin-sens"}}]
    write({"resourceType": "Binary", "id": "bin-letter", "contentType": "application/pdf",
           "data": base64.b64encode(PDF).decode()},
          {"resourceType": "Binary", "id": "bin-sens", "contentType": "application/pdf",
           "data": base64.b64encode(b"sensitive").decode()},
          letter, sensitive)

    token = issue_token(partner)
    client = Client(fhir_base, token)
    response = client.kick_off(f"Group/{group.pk}/$davinci-data-export")
    done = client.wait(response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert not [item for item in manifest["output"] if item["type"] == "Binary"]  # travels inside its document
    exported = [json.loads(line) for line in client.download(manifest)]
    documents = {r["id"]: r for r in exported if r["resourceType"] == "DocumentReference"}
    # The transmitter Provenance says what the documents were made from: the writer's source format.
    [transmitter] = [r for r in exported if r["resourceType"] == "Provenance"
                     and {"reference": "DocumentReference/doc-letter"} in r["target"]]
    [entity] = transmitter["entity"]
    assert entity["extension"][0]["url"] == SOURCE_FROM
    assert entity["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "image"
    get_fhir_model_class("Provenance").model_validate(transmitter)
    url = documents["doc-letter"]["content"][0]["attachment"]["url"]
    assert url == f"{fhir_base}/Binary/bin-letter"

    downloaded = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert downloaded.status_code == 200
    assert (downloaded.content, downloaded.headers["Content-Type"]) == (PDF, "application/pdf")
    as_fhir = requests.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
                           timeout=30)
    assert as_fhir.json()["resourceType"] == "Binary"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {issue_token(outsider)}"},
                        timeout=30).status_code == 404
    # A sensitive document is exported to this #sensitive partner; under a #regular consent neither it nor its
    # Binary is reachable.
    sens_url = documents["doc-sens"]["content"][0]["attachment"]["url"]
    assert requests.get(sens_url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    partner.consents.update(policy="regular")
    regular = requests.get(sens_url, headers={"Authorization": f"Bearer {issue_token(partner)}"}, timeout=30)
    assert regular.status_code == 404
    assert requests.get(url, headers={"Authorization": f"Bearer {issue_token(partner)}"},
                        timeout=30).status_code == 200
