"""Rate limits of /oauth/token and /oauth/register: 429 with Retry-After and an RFC 6749 body, counted in Redis."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from pdex import partners
from pdex.auth import client as smart_client
from pdex.auth import ratelimit
from pdex.auth.discovery import token_endpoint_url
from pdex.models import AuditEvent
from tests.fixtures.smart import new_client_key

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def es_key():
    return new_client_key("ES384")


@pytest.fixture
def smart_partner(db, es_key):
    return partners.create_partner(name=f"Busy Plan {uuid.uuid4().hex[:6]}", jwks=es_key[1], scope="system/*.read",
                                   status="active", registered_via="command")


def address() -> str:
    """A source address of this test alone (counters live in Redis across the run)."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def token_request(client, partner, key, remote: str, **assertion_args):
    assertion = smart_client.make_client_assertion(key, partner.client_id, token_endpoint_url(), **assertion_args)
    return client.post("/oauth/token", urlencode(smart_client.token_form(assertion, "system/Patient.rs")),
                       content_type=FORM, REMOTE_ADDR=remote)


def assert_rate_limited(response) -> None:
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "temporarily_unavailable" and "retry in" in body["error_description"]


def test_token_requests_beyond_the_limit_per_address_get_429(client, settings, smart_partner, es_key):
    settings.TOKEN_RATE_PER_ADDRESS = 3
    remote = address()
    statuses = [token_request(client, smart_partner, es_key[0], remote).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert_rate_limited(token_request(client, smart_partner, es_key[0], remote))
    # Another address still gets its own budget.
    assert token_request(client, smart_partner, es_key[0], address()).status_code == 200
    refused = AuditEvent.objects.filter(action="token", outcome=AuditEvent.Outcome.MINOR_FAILURE)
    assert list(refused.values_list("reason", flat=True)) == ["rate limit per source address"]


def test_token_requests_beyond_the_limit_per_client_get_429_from_any_address(client, settings, smart_partner,
                                                                             es_key):
    settings.TOKEN_RATE_PER_CLIENT = 2
    assert [token_request(client, smart_partner, es_key[0], address()).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(token_request(client, smart_partner, es_key[0], address()))
    event = AuditEvent.objects.filter(action="token", outcome=AuditEvent.Outcome.MINOR_FAILURE).get()
    assert event.reason == "rate limit per client" and event.partner == smart_partner


def test_nobody_spends_a_clients_budget_by_naming_it(client, settings, smart_partner, es_key):
    """Only assertions the client's own key signed count against it: forgeries naming it as iss do not."""
    settings.TOKEN_RATE_PER_CLIENT = 2
    forger, _ = new_client_key("ES384")
    for _ in range(5):
        response = token_request(client, smart_partner, forger, address(), kid=es_key[0]["kid"])
        assert response.status_code == 401
    assert token_request(client, smart_partner, es_key[0], address()).status_code == 200


def test_registrations_beyond_the_limit_per_address_get_429(client, db, settings):
    settings.REGISTER_RATE_PER_ADDRESS = 2
    remote = address()
    metadata = {"client_name": "Flood"}  # incomplete: refused 400 while under the limit
    statuses = [client.post("/oauth/register", metadata, content_type="application/json",
                            REMOTE_ADDR=remote).status_code for _ in range(3)]
    assert statuses[:2] == [400, 400]
    response = client.post("/oauth/register", metadata, content_type="application/json", REMOTE_ADDR=remote)
    assert_rate_limited(response)
    assert "registrations" in response.json()["error_description"]


def test_the_counter_is_atomic_across_threads(settings):
    """Fifty requests at once against a limit of 20 admit exactly 20 (Redis INCR, no read-modify-write)."""
    limit = ratelimit.Limit(f"test-{uuid.uuid4().hex[:8]}", 20, 60)
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda _: ratelimit.hit(limit, "one-subject").allowed, range(50)))
    assert results.count(True) == 20


def test_retry_after_is_when_the_subjects_window_ends():
    limit = ratelimit.Limit(f"test-{uuid.uuid4().hex[:8]}", 1, 60)
    now = 1_800_000_000.0
    first = ratelimit.hit(limit, "s", now=now)
    second = ratelimit.hit(limit, "s", now=now + 1)
    assert first.allowed and not second.allowed
    assert 1 <= second.retry_after <= 61 and second.retry_after == first.retry_after - 1


def test_the_address_is_the_last_hop_of_the_configured_proxy_header(rf, settings):
    request = rf.post("/oauth/token", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7", REMOTE_ADDR="10.0.0.1")
    assert ratelimit.source_address(request) == "10.0.0.1"
    settings.CLIENT_ADDRESS_HEADER = "X-Forwarded-For"
    assert ratelimit.source_address(request) == "198.51.100.7"
