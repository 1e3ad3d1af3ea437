"""The FHIR edge: every error under /fhir/ is an OperationOutcome with the right status, never HTML."""

import json

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from rest_framework.test import APIClient

from tests.conftest import issue_token

pytestmark = pytest.mark.urls("tests.error_urls")


def assert_outcome(response, status: int) -> OperationOutcome:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate_json(response.content)
    assert outcome.issue
    return outcome


@pytest.fixture
def reader(partner, api_for):
    """A client of `partner` with a token that may read everything."""
    return api_for(partner, "system/*.read")


def test_metadata_is_an_r4_capability_statement(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate_json(response.content)
    assert statement.fhirVersion == "4.0.1"
    assert statement.kind == "instance"


def test_metadata_accepts_plain_json(client):
    response = client.get("/fhir/metadata", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_400_bad_request(reader):
    outcome = assert_outcome(reader.get("/fhir/_test/fail/bad-request"), 400)
    assert outcome.issue[0].code == "invalid"
    assert "_foo" in outcome.issue[0].diagnostics


def test_400_unparseable_json(reader):
    response = reader.post("/fhir/_test/echo", data="{not json", content_type="application/fhir+json")
    assert assert_outcome(response, 400).issue[0].code == "structure"


def test_401_without_token(client, db):
    response = client.get("/fhir/_test/echo")
    assert assert_outcome(response, 401).issue[0].code == "login"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_401_with_expired_token(client, partner):
    token = issue_token(partner, "system/*.read", expires_in=-10)
    assert_outcome(client.get("/fhir/_test/echo", HTTP_AUTHORIZATION=f"Bearer {token}"), 401)


def test_401_for_a_suspended_partner(reader, partner):
    partner.status = "suspended"
    partner.save()
    assert_outcome(reader.get("/fhir/_test/echo"), 401)


def test_403_when_scopes_fall_short(partner, api_for):
    response = api_for(partner, "system/Patient.read").get("/fhir/_test/echo")
    assert assert_outcome(response, 403).issue[0].code == "forbidden"


def test_404_unknown_url(client):
    assert assert_outcome(client.get("/fhir/NoSuchThing/1"), 404).issue[0].code == "not-found"


def test_405_wrong_method(reader):
    response = reader.delete("/fhir/_test/echo")
    assert_outcome(response, 405)
    assert "GET" in response["Allow"]


def test_406_unsupported_accept(client):
    assert_outcome(client.get("/fhir/metadata", HTTP_ACCEPT="application/fhir+xml"), 406)


def test_415_unsupported_content_type(reader):
    response = reader.post("/fhir/_test/echo", data="<Parameters/>", content_type="application/fhir+xml")
    assert_outcome(response, 415)


def test_422_unprocessable(reader):
    response = reader.post("/fhir/_test/echo", data=json.dumps({"resourceType": "Patient"}),
                           content_type="application/fhir+json")
    assert assert_outcome(response, 422).issue[0].code == "processing"


def test_fhir_json_body_round_trips(reader):
    body = {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}
    response = reader.post("/fhir/_test/echo", data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    assert response.json() == body


def test_429_carries_retry_after(reader):
    response = reader.get("/fhir/_test/fail/throttled")
    assert assert_outcome(response, 429).issue[0].code == "throttled"
    assert response["Retry-After"] == "7"


def test_500_in_a_fhir_view_leaks_nothing(reader):
    response = reader.get("/fhir/_test/fail/crash")
    outcome = assert_outcome(response, 500)
    assert "secret" not in response.content.decode()
    assert outcome.issue[0].code == "exception"


def test_500_outside_drf_is_still_an_outcome(client):
    response = client.get("/fhir/_test/plain")
    assert_outcome(response, 500)
    assert "boom" not in response.content.decode()


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_redis_and_storage(client, db):
    body = client.get("/readyz").json()
    assert body["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}
    assert body["status"] == "ok"


def test_readyz_reports_an_unreachable_dependency(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("unavailable")


def test_every_refusal_of_a_fhir_view_is_audited_in_one_place(make_partner, api_for):
    """The edge audits what the view declares (action, entity from the URL) and what the error adds."""
    from pdex.models import AuditEvent

    partner = make_partner()
    api_for(partner).get("/fhir/Group/no-such-group")
    APIClient().post("/fhir/Patient/$member-match", data="{}", content_type="application/fhir+json")
    api_for(partner, scopes="system/Patient.rs").get("/fhir/Group/no-such-group")
    refused = AuditEvent.objects.filter(outcome=AuditEvent.Outcome.MINOR_FAILURE).order_by("recorded")
    assert [(e.action, e.entity, e.reason, e.partner_id) for e in refused] == [
        ("group-read", "Group/no-such-group", "404 not-found", partner.pk),
        ("member-match", "", "401 login", None),
        ("group-read", "Group/no-such-group", "403 forbidden", partner.pk),
    ]
