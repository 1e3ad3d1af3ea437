"""The FHIR edge: every error under /fhir/ is an OperationOutcome with the right status."""

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome


def assert_outcome(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate_json(response.content)
    assert outcome.issue
    return outcome


def test_metadata_is_an_r4_capability_statement(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate_json(response.content)
    assert statement.fhirVersion == "4.0.1"


def test_unknown_url_is_404_outcome(client):
    assert_outcome(client.get("/fhir/NoSuchThing/1"), 404)


def test_not_acceptable_is_406_outcome(client):
    assert_outcome(client.get("/fhir/metadata", HTTP_ACCEPT="application/fhir+xml"), 406)


def test_wrong_method_is_405_outcome(client):
    assert_outcome(client.delete("/fhir/metadata"), 405)


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_redis_and_storage(client, db):
    body = client.get("/readyz").json()
    assert body["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}
