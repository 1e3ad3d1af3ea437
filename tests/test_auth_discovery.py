"""SMART discovery and the CapabilityStatement's security section: what a client reads before anything."""

from __future__ import annotations

import pytest
from django.urls import include, path
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from pdex import views
from pdex.auth.discovery import OAUTH_URIS, smart_configuration
from tests.builders import example

urlpatterns = [path("fhir/metadata", views.MetadataView.as_view()), path("", include("pdex.urls"))]
pytestmark = pytest.mark.urls(__name__)



@pytest.fixture(autouse=True)
def public_base(settings):
    settings.FHIR_BASE_URL = "https://old-payer.example.org/fhir"
    settings.TOKEN_ENDPOINT_URL = ""


@pytest.mark.parametrize("accept", ["application/json", "application/fhir+json", "text/html", "*/*"])
def test_smart_configuration_is_public_json_whatever_the_accept_header(client, accept):
    response = client.get("/fhir/.well-known/smart-configuration", HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == smart_configuration()


def test_smart_configuration_has_what_backend_services_require(client):
    body = client.get("/fhir/.well-known/smart-configuration").json()
    assert body["token_endpoint"] == "https://old-payer.example.org/oauth/token"
    assert body["registration_endpoint"] == "https://old-payer.example.org/oauth/register"
    assert body["grant_types_supported"] == ["client_credentials"]
    assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert body["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"client-confidential-asymmetric", "permission-v1", "permission-v2"} <= set(body["capabilities"])
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_endpoint" not in body
    for scope in ("system/*.rs", "system/*.read",
                  "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match",
                  "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch"):
        assert scope in body["scopes_supported"]


def test_smart_configuration_covers_the_spec_example_fields():
    spec = example("smart-configuration.backend-services.json")
    ours = smart_configuration()
    required = {"token_endpoint", "grant_types_supported", "token_endpoint_auth_methods_supported",
                "token_endpoint_auth_signing_alg_values_supported", "registration_endpoint", "scopes_supported",
                "capabilities", "code_challenge_methods_supported"}
    assert required <= set(spec) and required <= set(ours)
    assert set(spec["scopes_supported"]) <= set(ours["scopes_supported"])


def test_token_endpoint_url_setting_wins(client, settings):
    settings.TOKEN_ENDPOINT_URL = "https://auth.old-payer.example.org/oauth/token"
    body = client.get("/fhir/.well-known/smart-configuration").json()
    assert body["token_endpoint"] == "https://auth.old-payer.example.org/oauth/token"
    assert body["registration_endpoint"] == "https://auth.old-payer.example.org/oauth/register"


def test_smart_configuration_is_read_only(client):
    assert client.post("/fhir/.well-known/smart-configuration").status_code == 405


def test_capability_statement_security_names_smart_and_the_oauth_uris(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = CapabilityStatement.model_validate_json(response.content)
    security = statement.rest[0].security
    coding = security.service[0].coding[0]
    assert (coding.system, coding.code) == (
        "http://terminology.hl7.org/CodeSystem/restful-security-service", "SMART-on-FHIR")
    oauth = next(ext for ext in security.extension if ext.url == OAUTH_URIS)
    uris = {ext.url: ext.valueUri for ext in oauth.extension}
    assert uris == {"token": "https://old-payer.example.org/oauth/token",
                    "register": "https://old-payer.example.org/oauth/register"}


@pytest.mark.urls("config.urls")
def test_site_urlconf_serves_discovery_token_and_registration(client, db):
    assert client.get("/fhir/.well-known/smart-configuration").json()["token_endpoint"].endswith("/oauth/token")
    assert client.post("/oauth/token", "", content_type="application/x-www-form-urlencoded").status_code == 400
    assert client.post("/oauth/register", "{}", content_type="application/json").status_code == 400
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
