"""SMART Backend Services token endpoint: what gets a token, and everything that must not."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests
from django.urls import include, path
from fhir.resources.R4B.operationoutcome import OperationOutcome
from oauth2_provider.models import AccessToken
from rest_framework.response import Response

from pdex import partners
from pdex.auth import client as smart_client
from pdex.auth.discovery import token_endpoint_url
from pdex.fhir import FhirView
from pdex.models import AuditEvent, Partner
from tests.conftest import issue_token
from tests.fixtures.smart import JwksServer, b64url, hs256_jwt, new_client_key, unsigned_jwt


class ProtectedView(FhirView):
    """A tiny protected endpoint, so these tests do not depend on other issues' views."""

    required_scopes = ("system/Patient.rs",)

    def get(self, request):
        return Response({"resourceType": "Parameters", "parameter": [{"name": "partner",
                                                                      "valueString": request.partner.name}]})


# This module is its own URLconf: the OAuth endpoints plus the protected view, nothing of other apps.
urlpatterns = [path("fhir/_auth-test/protected", ProtectedView.as_view()), path("", include("pdex.urls"))]
pytestmark = pytest.mark.urls(__name__)

SCOPE = "system/Patient.rs system/Group.rs"


@pytest.fixture(scope="module")
def es_key():
    return new_client_key("ES384")


@pytest.fixture(scope="module")
def rs_key():
    return new_client_key("RS384")


@pytest.fixture
def smart_partner(db, es_key):
    """An active partner whose inline JWKS holds one ES384 key."""
    return partners.create_partner(name="New Plan", jwks=es_key[1], scope="system/*.read", status="active",
                                   registered_via="command")


def post_token(client, form: dict[str, str]):
    return client.post("/oauth/token", urlencode(form), content_type="application/x-www-form-urlencoded")


def good_form(partner: Partner, private_jwk: dict, *, scope: str = SCOPE, **assertion_args) -> dict[str, str]:
    assertion = smart_client.make_client_assertion(private_jwk, partner.client_id, token_endpoint_url(),
                                                   **assertion_args)
    return smart_client.token_form(assertion, scope)


def assert_refused(response, status: int, error: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error
    assert "access_token" not in body
    assert AccessToken.objects.count() == 0
    assert AuditEvent.objects.filter(action="token", outcome=AuditEvent.Outcome.MINOR_FAILURE).exists()


# --- the happy path -------------------------------------------------------------------------------

def test_es384_assertion_gets_a_five_minute_bearer_token(client, smart_partner, es_key):
    response = post_token(client, good_form(smart_partner, es_key[0]))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "bearer"
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == SCOPE
    assert "refresh_token" not in body
    assert response["Cache-Control"] == "no-store"
    token = AccessToken.objects.get()
    assert token.application == smart_partner.application and token.scope == SCOPE
    event = AuditEvent.objects.get(action="token", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.partner == smart_partner and event.detail["scope"] == SCOPE


def test_rs384_assertion_gets_a_token(client, db, rs_key):
    partner = partners.create_partner(name="RSA Plan", jwks=rs_key[1], scope="system/*.rs", status="active")
    response = post_token(client, good_form(partner, rs_key[0], scope="system/Group.read"))
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "system/Group.read"


def test_scope_is_requested_intersected_with_allowed(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0],
                     scope="system/Patient.read system/Observation.cruds launch/patient system/Patient.read")
    response = post_token(client, form)
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "system/Patient.read system/Observation.rs"


def test_both_spellings_of_the_bulk_member_match_scope(client, db, es_key):
    partner = partners.create_partner(
        name="Bulk Plan", jwks=es_key[1], status="active",
        scope="http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch",
    )
    legacy = "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match"
    response = post_token(client, good_form(partner, es_key[0], scope=legacy))
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == legacy


def test_jwks_url_is_fetched_and_cached_per_cache_control(client, db, es_key, settings):
    settings.JWKS_ALLOW_HTTP = True
    server = JwksServer(es_key[1], cache_control="max-age=120")
    try:
        partner = partners.create_partner(name="URL Plan", jwks_url=server.url, scope="system/*.read",
                                          status="active")
        for _ in range(3):
            response = post_token(client, good_form(partner, es_key[0], jku=server.url))
            assert response.status_code == 200, response.content
        assert server.hits == 1
    finally:
        server.stop()


def test_jwks_url_without_caching_is_fetched_every_time(client, db, es_key, settings):
    settings.JWKS_ALLOW_HTTP = True
    server = JwksServer(es_key[1], cache_control="no-store")
    try:
        partner = partners.create_partner(name="No-store Plan", jwks_url=server.url, scope="system/*.read",
                                          status="active")
        for _ in range(2):
            assert post_token(client, good_form(partner, es_key[0])).status_code == 200
        assert server.hits == 2
    finally:
        server.stop()


def test_rotated_key_at_jwks_url_is_picked_up_despite_cache(client, db, es_key, settings):
    settings.JWKS_ALLOW_HTTP = True
    server = JwksServer(es_key[1], cache_control="max-age=3600")
    try:
        partner = partners.create_partner(name="Rotating Plan", jwks_url=server.url, scope="system/*.read",
                                          status="active")
        assert post_token(client, good_form(partner, es_key[0])).status_code == 200
        new_private, new_public = new_client_key("ES384")
        server.jwks = new_public
        assert post_token(client, good_form(partner, new_private)).status_code == 200
        assert server.hits == 2
    finally:
        server.stop()


# --- the negative matrix: every refusal issues no token ---------------------------------------------

def _claims(partner, **overrides):
    now = int(time.time())
    claims = {"iss": partner.client_id, "sub": partner.client_id, "aud": token_endpoint_url(),
              "exp": now + 120, "jti": uuid.uuid4().hex}
    claims.update(overrides)
    return claims


@pytest.mark.parametrize("change, error, status", [
    (lambda f: f.pop("grant_type"), "invalid_request", 400),
    (lambda f: f.update(grant_type="password"), "unsupported_grant_type", 400),
    (lambda f: f.update(grant_type="authorization_code"), "unsupported_grant_type", 400),
    (lambda f: f.pop("client_assertion_type"), "invalid_request", 400),
    (lambda f: f.update(client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
     "invalid_client", 401),
    (lambda f: f.pop("client_assertion"), "invalid_request", 400),
    (lambda f: f.update(client_assertion="not-a-jwt"), "invalid_client", 401),
    (lambda f: f.pop("scope"), "invalid_scope", 400),
], ids=["no-grant-type", "password-grant", "code-grant", "no-assertion-type", "saml-assertion-type",
        "no-assertion", "garbage-assertion", "no-scope"])
def test_malformed_requests_are_refused(client, smart_partner, es_key, change, error, status):
    form = good_form(smart_partner, es_key[0])
    change(form)
    assert_refused(post_token(client, form), status, error)


def test_alg_none_is_refused(client, smart_partner, es_key):
    header = {"alg": "none", "typ": "JWT", "kid": es_key[0]["kid"]}
    form = smart_client.token_form(unsigned_jwt(header, _claims(smart_partner)), SCOPE)
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_hs256_keyed_with_the_public_key_is_refused(client, smart_partner, es_key):
    header = {"alg": "HS256", "typ": "JWT", "kid": es_key[0]["kid"]}
    secret = str(es_key[1]).encode()
    form = smart_client.token_form(hs256_jwt(header, _claims(smart_partner), secret), SCOPE)
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_rs256_is_refused(client, db, rs_key):
    partner = partners.create_partner(name="RS256 Plan", jwks=rs_key[1], scope="system/*.read", status="active")
    from joserfc import jwt
    from joserfc.jwk import import_key

    any_alg = {name: value for name, value in rs_key[0].items() if name != "alg"}
    assertion = jwt.encode({"alg": "RS256", "kid": rs_key[0]["kid"]}, _claims(partner), import_key(any_alg),
                           algorithms=["RS256"])
    assert_refused(post_token(client, smart_client.token_form(assertion, SCOPE)), 401, "invalid_client")


def test_bad_signature_is_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0])
    head, _payload, signature = form["client_assertion"].split(".")
    forged = dict(_claims(smart_partner), exp=int(time.time()) + 200)
    form["client_assertion"] = f"{head}.{b64url(json.dumps(forged).encode())}.{signature}"
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_signed_by_another_key_with_the_registered_kid_is_refused(client, smart_partner, es_key):
    other_private, _ = new_client_key("ES384")
    form = good_form(smart_partner, other_private, kid=es_key[0]["kid"])
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_unknown_kid_is_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0], kid="no-such-kid")
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_missing_kid_is_refused(client, smart_partner, es_key):
    from joserfc import jwt
    from joserfc.jwk import import_key

    assertion = jwt.encode({"alg": "ES384"}, _claims(smart_partner), import_key(es_key[0]), algorithms=["ES384"])
    assert_refused(post_token(client, smart_client.token_form(assertion, SCOPE)), 401, "invalid_client")


def test_mismatched_jku_is_refused(client, db, es_key, settings):
    settings.JWKS_ALLOW_HTTP = True
    server = JwksServer(es_key[1])
    try:
        partner = partners.create_partner(name="JKU Plan", jwks_url=server.url, scope="system/*.read",
                                          status="active")
        form = good_form(partner, es_key[0], jku="https://attacker.example.com/jwks.json")
        assert_refused(post_token(client, form), 401, "invalid_client")
        assert server.hits == 0
    finally:
        server.stop()


def test_jku_with_inline_keys_only_is_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0], jku="https://new-payer.example.com/jwks.json")
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_wrong_audience_is_refused(client, smart_partner, es_key):
    assertion = smart_client.make_client_assertion(es_key[0], smart_partner.client_id,
                                                   "https://other-payer.example.org/oauth/token")
    assert_refused(post_token(client, smart_client.token_form(assertion, SCOPE)), 401, "invalid_client")


def test_iss_different_from_sub_is_refused(client, smart_partner, es_key):
    from joserfc import jwt
    from joserfc.jwk import import_key

    claims = _claims(smart_partner, sub="someone-else")
    assertion = jwt.encode({"alg": "ES384", "kid": es_key[0]["kid"]}, claims, import_key(es_key[0]),
                           algorithms=["ES384"])
    assert_refused(post_token(client, smart_client.token_form(assertion, SCOPE)), 401, "invalid_client")


def test_unknown_client_is_refused(client, smart_partner, es_key):
    assertion = smart_client.make_client_assertion(es_key[0], "no-such-client", token_endpoint_url())
    assert_refused(post_token(client, smart_client.token_form(assertion, SCOPE)), 401, "invalid_client")


@pytest.mark.parametrize("status", [Partner.Status.SUSPENDED, Partner.Status.PENDING])
def test_inactive_partner_is_refused(client, smart_partner, es_key, status):
    smart_partner.status = status
    smart_partner.save()
    assert_refused(post_token(client, good_form(smart_partner, es_key[0])), 401, "invalid_client")
    assert AuditEvent.objects.get(action="token").partner == smart_partner


def test_expired_assertion_is_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0], now=int(time.time()) - 600)
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_exp_more_than_five_minutes_ahead_is_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0], lifetime=6 * 60 + 61)
    assert_refused(post_token(client, form), 401, "invalid_client")


def test_reused_jti_is_refused(client, smart_partner, es_key):
    jti = uuid.uuid4().hex
    assert post_token(client, good_form(smart_partner, es_key[0], jti=jti)).status_code == 200
    AccessToken.objects.all().delete()
    assert_refused(post_token(client, good_form(smart_partner, es_key[0], jti=jti)), 401, "invalid_client")


def test_scope_not_allowed_is_refused(client, db, es_key):
    partner = partners.create_partner(name="Narrow Plan", jwks=es_key[1], scope="system/Group.rs", status="active")
    form = good_form(partner, es_key[0], scope="http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match")
    assert_refused(post_token(client, form), 400, "invalid_scope")


def test_client_secret_is_never_enough(client, smart_partner):
    form = {"grant_type": "client_credentials", "client_id": smart_partner.client_id,
            "client_secret": "guess", "scope": SCOPE}
    assert_refused(post_token(client, form), 400, "invalid_request")


def test_client_id_parameter_must_match_the_assertion(client, smart_partner, es_key, make_partner):
    other = make_partner("Other Plan")
    form = dict(good_form(smart_partner, es_key[0]), client_id=other.client_id)
    assert_refused(post_token(client, form), 401, "invalid_client")


GENERIC = {"error": "invalid_client", "error_description": "Client authentication failed."}


def test_refusals_that_depend_on_who_is_registered_say_nothing_specific(client, smart_partner, es_key):
    """Unknown client, unknown key, another key's signature, an inactive client: one text for all, so an
    assertion tells nobody which client ids or keys exist; the audit trail keeps the real reasons apart."""
    other_private, _ = new_client_key("ES384")
    bodies = [
        post_token(client, good_form(smart_partner, es_key[0], kid="no-such-kid")).json(),
        post_token(client, smart_client.token_form(
            smart_client.make_client_assertion(es_key[0], "no-such-client", token_endpoint_url()), SCOPE)).json(),
        post_token(client, good_form(smart_partner, other_private, kid=es_key[0]["kid"])).json(),
    ]
    assert bodies == [GENERIC] * 3
    smart_partner.status = Partner.Status.SUSPENDED
    smart_partner.save()
    assert post_token(client, good_form(smart_partner, es_key[0])).json() == GENERIC
    reasons = set(AuditEvent.objects.filter(action="token").values_list("reason", flat=True))
    assert reasons == {"no single registered key matches kid and alg", "unknown client", "bad signature",
                       "client not active"}


@pytest.mark.parametrize("assertion_args, says", [
    ({"aud": "https://other-payer.example.org/oauth/token"}, "aud must be the token URL http"),
    ({"lifetime": 6 * 60 + 61}, "exp is too far ahead"),
    ({"now": int(time.time()) - 600}, "has expired"),
], ids=["aud", "exp-too-far", "expired"])
def test_refusals_of_a_signed_assertion_name_the_claim_to_fix(client, smart_partner, es_key, assertion_args, says):
    """Once the signature proved who sent it, the client is told which of its own claims is wrong."""
    response = post_token(client, good_form(smart_partner, es_key[0], **assertion_args))
    assert_refused(response, 401, "invalid_client")
    description = response.json()["error_description"]
    assert says in description
    assert smart_partner.client_id not in description and es_key[0]["kid"] not in description


def test_aud_must_be_the_token_url_itself(client, smart_partner, es_key):
    description = post_token(client, good_form(smart_partner, es_key[0], aud="https://x.example/token")).json()[
        "error_description"]
    assert token_endpoint_url() in description


def test_a_reused_jti_is_named(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0])
    assert post_token(client, form).status_code == 200
    body = post_token(client, form).json()
    assert body["error"] == "invalid_client" and "jti was already used" in body["error_description"]


def test_an_algorithm_not_allowed_is_named(client, smart_partner, es_key):
    header = {"alg": "HS256", "typ": "JWT", "kid": es_key[0]["kid"]}
    form = smart_client.token_form(hs256_jwt(header, _claims(smart_partner), b"guess"), SCOPE)
    body = post_token(client, form).json()
    assert body["error"] == "invalid_client" and "alg must be one of RS384, ES384" in body["error_description"]


def test_extra_jose_header_parameters_still_get_a_token(client, smart_partner, es_key):
    """RFC 7515 §4: parameters not understood are ignored unless in `crit` (node-jose adds `kty`)."""
    extra = {"kty": "EC", "x5t": "c29tZS10aHVtYnByaW50", "x-acme-trace": "abc123"}
    response = post_token(client, good_form(smart_partner, es_key[0], extra_header=extra))
    assert response.status_code == 200, response.content
    assert response.json()["token_type"] == "bearer"


def test_a_crit_header_gets_no_token(client, smart_partner, es_key):
    assertion = good_form(smart_partner, es_key[0])["client_assertion"]
    header = {"alg": "ES384", "typ": "JWT", "kid": es_key[0]["kid"], "crit": ["x-acme"], "x-acme": 1}
    forged = ".".join([b64url(json.dumps(header).encode()), *assertion.split(".")[1:]])
    response = post_token(client, smart_client.token_form(forged, SCOPE))
    assert_refused(response, 401, "invalid_client")
    assert "crit" in response.json()["error_description"]
    assert AuditEvent.objects.get(action="token").reason == "crit header not supported"


@pytest.mark.parametrize("aud", [lambda url: [url, "https://other-payer.example.org/oauth/token"],
                                 lambda url: [url, url]], ids=["two-audiences", "twice"])
def test_an_assertion_for_several_audiences_is_refused(client, smart_partner, es_key, aud):
    response = post_token(client, good_form(smart_partner, es_key[0], aud=aud(token_endpoint_url())))
    assert_refused(response, 401, "invalid_client")
    assert AuditEvent.objects.get(action="token").reason == "aud names other audiences too"


def test_an_assertion_for_the_token_url_alone_in_an_array_gets_a_token(client, smart_partner, es_key):
    assert post_token(client, good_form(smart_partner, es_key[0], aud=[token_endpoint_url()])).status_code == 200


@pytest.mark.parametrize("name", ["client_assertion", "scope", "grant_type", "client_assertion_type"])
def test_a_repeated_form_parameter_is_invalid_request(client, smart_partner, es_key, name):
    """RFC 6749 §3.2: parameters MUST NOT be included more than once."""
    form = good_form(smart_partner, es_key[0])
    second = good_form(smart_partner, es_key[0])[name]
    body = urlencode(form) + "&" + urlencode({name: second})
    response = client.post("/oauth/token", body, content_type="application/x-www-form-urlencoded")
    assert_refused(response, 400, "invalid_request")
    assert name in response.json()["error_description"]


@pytest.mark.parametrize("scope", ["system/UnknownResource.read", "system/UnknownResource.r",
                                   "system/Patient.rs system/Foo.rs"])
def test_a_scope_naming_no_resource_type_is_invalid_scope(client, smart_partner, es_key, scope):
    response = post_token(client, good_form(smart_partner, es_key[0], scope=scope))
    assert_refused(response, 400, "invalid_scope")
    assert "names no FHIR R4 resource type" in response.json()["error_description"]


def test_token_request_must_be_form_encoded(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0])
    assert_refused(client.post("/oauth/token", form), 400, "invalid_request")  # multipart
    assert_refused(client.post("/oauth/token", json.dumps(form), content_type="application/json"), 400,
                   "invalid_request")


def test_parameters_in_the_query_string_are_refused(client, smart_partner, es_key):
    form = good_form(smart_partner, es_key[0])
    response = client.post(f"/oauth/token?{urlencode(form)}", "", content_type="application/x-www-form-urlencoded")
    assert_refused(response, 400, "invalid_request")


def test_get_is_not_allowed(client, db):
    assert client.get("/oauth/token").status_code == 405


# --- over real HTTP --------------------------------------------------------------------------------

@pytest.fixture
def live_fhir(live_server, settings):
    settings.FHIR_BASE_URL = live_server.url + "/fhir"
    return live_server.url + "/fhir"


def test_client_knowing_only_discovery_and_its_key_calls_a_protected_endpoint(live_fhir, transactional_db, es_key):
    partner = partners.create_partner(name="Discovering Plan", jwks=es_key[1], scope="system/*.read",
                                      status="active")
    configuration = smart_client.discover(live_fhir)
    token = smart_client.request_token(configuration["token_endpoint"], partner.client_id, es_key[0],
                                       "system/Patient.rs")
    response = requests.get(f"{live_fhir}/_auth-test/protected", timeout=10,
                            headers={"Authorization": f"Bearer {token['access_token']}"})
    assert response.status_code == 200, response.text
    assert response.json()["parameter"][0]["valueString"] == "Discovering Plan"


def _assert_outcome(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert OperationOutcome.model_validate_json(response.content).issue


def test_no_token_or_expired_token_is_401_outcome(live_fhir, transactional_db, es_key):
    partner = partners.create_partner(name="Late Plan", jwks=es_key[1], scope="system/*.read", status="active")
    url = f"{live_fhir}/_auth-test/protected"
    _assert_outcome(requests.get(url, timeout=10), 401)
    expired = issue_token(partner, "system/*.read", expires_in=-5)
    _assert_outcome(requests.get(url, timeout=10, headers={"Authorization": f"Bearer {expired}"}), 401)
    _assert_outcome(requests.get(url, timeout=10, headers={"Authorization": "Bearer made-up"}), 401)


def test_token_without_the_needed_scope_is_403_outcome(live_fhir, transactional_db, es_key):
    partner = partners.create_partner(name="Group-only Plan", jwks=es_key[1], scope="system/Group.rs",
                                      status="active")
    token = smart_client.request_token(smart_client.discover(live_fhir)["token_endpoint"], partner.client_id,
                                       es_key[0], "system/Group.rs")
    response = requests.get(f"{live_fhir}/_auth-test/protected", timeout=10,
                            headers={"Authorization": f"Bearer {token['access_token']}"})
    _assert_outcome(response, 403)


def test_suspending_a_partner_revokes_its_live_token(live_fhir, transactional_db, es_key):
    partner = partners.create_partner(name="Suspended Plan", jwks=es_key[1], scope="system/*.read",
                                      status="active")
    token = smart_client.request_token(smart_client.discover(live_fhir)["token_endpoint"], partner.client_id,
                                       es_key[0], "system/Patient.rs")["access_token"]
    partners.suspend(partner, reason="agreement ended")
    response = requests.get(f"{live_fhir}/_auth-test/protected", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    _assert_outcome(response, 401)


def test_same_assertion_fifty_times_at_once_yields_exactly_one_token(live_server, settings, transactional_db,
                                                                     es_key):
    settings.FHIR_BASE_URL = live_server.url + "/fhir"
    partner = partners.create_partner(name="Racing Plan", jwks=es_key[1], scope="system/*.read", status="active")
    body = urlencode(good_form(partner, es_key[0]))
    host, port = live_server.thread.host, live_server.thread.port
    # Connect first (the test server's listen backlog is small), then send all fifty requests together.
    connections = [http.client.HTTPConnection(host, port, timeout=60) for _ in range(50)]
    for connection in connections:
        connection.connect()
    start = threading.Barrier(len(connections))

    def send(connection: http.client.HTTPConnection) -> tuple[int, dict]:
        start.wait()
        connection.request("POST", "/oauth/token", body=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        result = response.status, json.loads(response.read())
        connection.close()
        return result

    with ThreadPoolExecutor(max_workers=len(connections)) as pool:
        results = list(pool.map(send, connections))
    assert sorted(status for status, _ in results) == [200] + [401] * 49
    assert all(body["error"] == "invalid_client" for status, body in results if status != 200)
    assert AccessToken.objects.filter(application=partner.application).count() == 1
    refused = AuditEvent.objects.filter(action="token", partner=partner, outcome=AuditEvent.Outcome.MINOR_FAILURE)
    assert refused.count() == 49 and set(refused.values_list("reason", flat=True)) == {"jti already used"}
