"""Our client signing keys: created on first use, sealed at rest, rotated without downtime — the JWKS we serve
holds two keys whenever a payer could still see either — and the assertions we sign verify with it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from joserfc import jwt
from joserfc.jwk import KeySet

from pdex.auth.client import make_client_assertion
from requesting import keys
from requesting.models import SigningKey

pytestmark = pytest.mark.django_db


def published(client) -> list[str]:
    response = client.get("/client/jwks.json")
    assert response.status_code == 200 and "max-age" in response["Cache-Control"]
    return [key["kid"] for key in response.json()["keys"]]


def test_a_roll_over_keeps_every_key_a_payer_may_verify_with_in_the_jwks(client, settings):
    settings.P2P_KEY_PUBLISH_SECONDS, settings.P2P_KEY_RETIRE_SECONDS = 3600, 3600
    first = keys.active_key()
    assert published(client) == [first.kid]
    now = timezone.now()
    nxt = keys.rotate(now=now)
    assert published(client) == [first.kid, nxt.kid] and keys.active_key().kid == first.kid
    assert keys.advance(now=now + timedelta(minutes=59)) == []
    steps = keys.advance(now=now + timedelta(minutes=61))
    assert steps == [f"retired {first.kid}", f"activated {nxt.kid}"]
    assert keys.active_key().kid == nxt.kid and published(client) == [first.kid, nxt.kid]
    keys.advance(now=now + timedelta(minutes=122))
    assert published(client) == [nxt.kid]
    assert SigningKey.objects.get(kid=first.kid).private_jwk_sealed == ""


def test_private_keys_are_sealed_at_rest_and_assertions_verify_with_the_published_set(client):
    key = keys.active_key()
    assert '"d"' not in key.private_jwk_sealed and "d" not in key.public_jwk
    assertion = make_client_assertion(keys.signing_jwk(), "client-1", "https://old.example/oauth/token")
    verified = jwt.decode(assertion, KeySet.import_key_set(client.get("/client/jwks.json").json()),
                          algorithms=["ES384"])
    assert verified.claims["iss"] == "client-1"


def test_a_changed_encryption_secret_cannot_open_the_keys(settings):
    keys.active_key()
    settings.P2P_KEY_ENCRYPTION_SECRET = "another secret"
    with pytest.raises(keys.KeyUnavailable):
        keys.signing_jwk()
