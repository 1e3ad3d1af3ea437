"""Client assertion rules as pure functions (a frozen clock, a fake key source), and the JWKS fetch limits."""

from __future__ import annotations

import socket

import pytest
from joserfc import jwt
from joserfc.jwk import import_key

from pdex.auth import jwks as jwks_lib
from pdex.auth.assertion import AssertionRejected, ClientKeys, verify_client_assertion
from pdex.auth.client import make_client_assertion
from tests.fixtures.smart import JwksServer, new_client_key

NOW = 1_784_124_000
TOKEN_URL = "https://old-payer.example.org/oauth/token"
JWKS_URL = "https://new-payer.example.com/.well-known/jwks.json"


@pytest.fixture(scope="module")
def es_key():
    return new_client_key("ES384")


def verify(assertion, client: ClientKeys | None, *, fetch=None, now=NOW):
    return verify_client_assertion(assertion, token_url=TOKEN_URL, now=now, find_client=lambda _: client,
                                   fetch=fetch or (lambda url, fresh=False: pytest.fail("unexpected fetch")))


def inline(es_key, **changes) -> ClientKeys:
    return ClientKeys(**{"client_id": "new-payer", "active": True, "jwks": es_key[1], "jwks_url": "", **changes})


def sign(es_key, **kwargs) -> str:
    return make_client_assertion(es_key[0], "new-payer", TOKEN_URL, now=NOW, **kwargs)


def reason(assertion, client, **kwargs) -> str:
    with pytest.raises(AssertionRejected) as refused:
        verify(assertion, client, **kwargs)
    return refused.value.reason


def test_valid_assertion_returns_client_jti_and_exp(es_key):
    verified = verify(sign(es_key, jti="abc", lifetime=300), inline(es_key))
    assert (verified.client_id, verified.jti, verified.exp) == ("new-payer", "abc", NOW + 300)


@pytest.mark.parametrize("offset, ok", [(0, True), (-59, True), (-60, False), (-61, False)])
def test_expiry_allows_a_minute_of_clock_skew(es_key, offset, ok):
    assertion = sign(es_key, lifetime=10)
    now = NOW + 10 - offset
    if ok:
        verify(assertion, inline(es_key), now=now)
    else:
        assert reason(assertion, inline(es_key), now=now) == "assertion expired"


@pytest.mark.parametrize("lifetime, ok", [(300, True), (360, True), (361, False), (3600, False)])
def test_exp_at_most_five_minutes_ahead_plus_skew(es_key, lifetime, ok):
    assertion = sign(es_key, lifetime=lifetime)
    if ok:
        verify(assertion, inline(es_key))
    else:
        assert reason(assertion, inline(es_key)) == "exp more than 300 s ahead"


def test_audience_may_be_a_one_element_list_of_the_token_url(es_key):
    verify(sign(es_key, aud=[TOKEN_URL]), inline(es_key))


@pytest.mark.parametrize("aud", [[TOKEN_URL, "https://other-payer.example.org/oauth/token"], ["x", TOKEN_URL],
                                 [TOKEN_URL, TOKEN_URL]])
def test_audience_naming_other_audiences_too_is_refused(es_key, aud):
    """An assertion good at another server too could be replayed here by that server (issue 12)."""
    with pytest.raises(AssertionRejected) as refused:
        verify(sign(es_key, aud=aud), inline(es_key))
    assert refused.value.reason == "aud names other audiences too"
    assert TOKEN_URL in refused.value.description


def test_token_url_with_a_trailing_slash_is_another_audience(es_key):
    assertion = make_client_assertion(es_key[0], "new-payer", TOKEN_URL + "/", now=NOW)
    assert reason(assertion, inline(es_key)) == "aud is not this token endpoint"


def test_missing_jti_is_refused(es_key):
    claims = {"iss": "new-payer", "sub": "new-payer", "aud": TOKEN_URL, "exp": NOW + 60}
    assertion = jwt.encode({"alg": "ES384", "kid": es_key[0]["kid"]}, claims, import_key(es_key[0]),
                           algorithms=["ES384"])
    assert reason(assertion, inline(es_key)) == "jti missing"


def test_typ_other_than_jwt_is_refused(es_key):
    claims = {"iss": "new-payer", "sub": "new-payer", "aud": TOKEN_URL, "exp": NOW + 60, "jti": "j"}
    assertion = jwt.encode({"alg": "ES384", "kid": es_key[0]["kid"], "typ": "at+jwt"}, claims,
                           import_key(es_key[0]), algorithms=["ES384"])
    assert reason(assertion, inline(es_key)) == "typ must be JWT"


def test_key_type_must_fit_alg(es_key):
    _, rsa_public = new_client_key("RS384")
    rsa_public["keys"][0]["kid"] = es_key[0]["kid"]  # same kid, wrong kind of key
    assert "no single registered key" in reason(sign(es_key), inline(es_key, jwks=rsa_public))


def test_two_keys_with_the_same_kid_at_the_url_are_refused(es_key):
    twice = {"keys": [es_key[1]["keys"][0], dict(es_key[1]["keys"][0])]}
    client = inline(es_key, jwks=None, jwks_url=JWKS_URL)
    assert "no single registered key" in reason(sign(es_key), client, fetch=lambda url, fresh=False: twice)


def test_jwks_url_is_refetched_once_when_the_kid_is_new(es_key):
    calls = []

    def fetch(url, fresh=False):
        calls.append(fresh)
        return es_key[1] if fresh else {"keys": []}

    verify(sign(es_key, jku=JWKS_URL), inline(es_key, jwks=None, jwks_url=JWKS_URL), fetch=fetch)
    assert calls == [False, True]


def test_unreachable_jwks_url_is_refused(es_key):
    def fetch(url, fresh=False):
        raise jwks_lib.JwksUnavailable("timeout")

    assert reason(sign(es_key), inline(es_key, jwks=None, jwks_url=JWKS_URL), fetch=fetch).startswith("JWKS URL")


def test_nothing_is_fetched_for_a_foreign_jku(es_key):
    client = inline(es_key, jwks=None, jwks_url=JWKS_URL)
    assert reason(sign(es_key, jku="https://evil.example/jwks"), client) == "jku differs from the registered JWKS URL"


def test_inactive_client_is_refused_before_any_key_work(es_key):
    assert reason(sign(es_key), inline(es_key, active=False)) == "client not active"


def test_unknown_client(es_key):
    assert reason(sign(es_key), None) == "unknown client"


@pytest.mark.parametrize("header, expected", [
    ({"Cache-Control": "max-age=120"}, 120),
    ({"Cache-Control": "public, max-age=999999"}, 3600),
    ({"Cache-Control": "no-store"}, 0),
    ({"Cache-Control": "no-cache, max-age=60"}, 0),
    ({"Cache-Control": "s-maxage=30, max-age=60"}, 30),
    ({"Cache-Control": "max-age=oops"}, 0),
    ({}, 300),
])
def test_jwks_cache_lifetime_follows_cache_control(header, expected):
    assert jwks_lib.cache_seconds(header.get("Cache-Control"), default=300, cap=3600) == expected


def test_plain_http_jwks_url_is_not_fetched_unless_allowed(settings):
    settings.JWKS_ALLOW_HTTP = False
    with pytest.raises(jwks_lib.JwksUnavailable):
        jwks_lib.fetch_jwks("http://new-payer.example.com/jwks.json", fresh=True)


def test_jwks_fetch_gives_up_at_its_timeout(settings):
    settings.JWKS_ALLOW_HTTP = True
    settings.JWKS_FETCH_TIMEOUT_SECONDS = 0.3
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(jwks_lib.JwksUnavailable, match="ReadTimeout"):
            jwks_lib.fetch_jwks(f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json", fresh=True)


def test_oversized_jwks_is_not_accepted(settings):
    settings.JWKS_ALLOW_HTTP = True
    server = JwksServer({"keys": [{"kid": "x" * (jwks_lib.MAX_JWKS_BYTES + 1)}]})
    try:
        with pytest.raises(jwks_lib.JwksUnavailable, match="too large"):
            jwks_lib.fetch_jwks(server.url, fresh=True)
    finally:
        server.stop()


def _with_header(es_key, **extra) -> str:
    return sign(es_key, extra_header=extra)


def test_unknown_header_parameters_are_ignored(es_key):
    """RFC 7515 §4: not understood and not in `crit` → ignored (node-jose clients such as BDT send `kty`)."""
    verify(_with_header(es_key, kty="EC", x5t="c29tZS10aHVtYnByaW50", **{"x-private": 1}), inline(es_key))


def test_crit_header_is_refused(es_key):
    import base64
    import json

    valid = _with_header(es_key, **{"x-private": 1})
    header = {"alg": "ES384", "typ": "JWT", "kid": es_key[0]["kid"], "crit": ["x-private"], "x-private": 1}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    # joserfc will not sign a crit it does not know; refused before the signature is looked at anyway.
    assert reason(".".join([encoded, *valid.split(".")[1:]]), inline(es_key)) == "crit header not supported"


def test_a_header_problem_is_audited_as_one_and_named_to_the_client(es_key):
    """A registered header parameter with a wrong value is a header problem, not a "bad signature"."""
    import base64
    import json

    header = {"alg": "ES384", "typ": "JWT", "kid": es_key[0]["kid"], "x5c": "not-a-list"}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    # joserfc will not sign such a header: the header is checked before any key or signature.
    with pytest.raises(AssertionRejected) as refused:
        verify(".".join([encoded, *sign(es_key).split(".")[1:]]), inline(es_key))
    assert refused.value.reason.startswith("header: ") and "x5c" in refused.value.reason
    assert "x5c" in refused.value.description and "header" in refused.value.description


def test_a_certificate_chain_in_the_header_fits(es_key):
    """joserfc's default cap of 512 header bytes would refuse an x5c chain as "malformed" (UDAP clients)."""
    chain = ["MII" + "A" * 1500, "MII" + "B" * 1500]
    verify(_with_header(es_key, x5c=chain), inline(es_key))


def test_a_signature_by_another_key_is_a_bad_signature_and_tells_nothing(es_key):
    other_private, _ = new_client_key("ES384")
    assertion = make_client_assertion(other_private, "new-payer", TOKEN_URL, now=NOW, kid=es_key[0]["kid"])
    with pytest.raises(AssertionRejected) as refused:
        verify(assertion, inline(es_key))
    assert refused.value.reason == "bad signature"
    assert refused.value.description == "Client authentication failed."
