"""Our signing keys as a client of other payers: created, rotated without downtime, published as a JWKS.

SMART Backend Services (spec §8.1) lets a client rotate its keys when the server holds its JWKS *URL*: we
register `P2P_CLIENT_JWKS_URL` with every previous payer and serve our public keys there. A roll-over keeps
two keys published at every moment a payer could be looking:

    rotate():  a NEXT key is published beside the ACTIVE one (the JWKS holds both)
    after P2P_KEY_PUBLISH_SECONDS (longer than a payer may cache our JWKS): NEXT signs, the old key is RETIRED
               but stays published, since assertions it signed may still be in flight
    after P2P_KEY_RETIRE_SECONDS: the retired key is WITHDRAWN (gone from the JWKS, its private half erased)

`advance()` makes those steps; beat runs it. Private keys are stored encrypted (Fernet) under a key derived
from P2P_KEY_ENCRYPTION_SECRET (default: SECRET_KEY), so a copy of the database alone cannot sign as us.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pdex import audit
from pdex.management.commands.make_client_keys import generate_private_jwk, public_jwks
from requesting.models import SigningKey

PUBLISHED = (SigningKey.State.NEXT, SigningKey.State.ACTIVE, SigningKey.State.RETIRED)


class KeyUnavailable(RuntimeError):
    """A stored private key cannot be opened (P2P_KEY_ENCRYPTION_SECRET changed?)."""


def _fernet() -> Fernet:
    secret = (settings.P2P_KEY_ENCRYPTION_SECRET or settings.SECRET_KEY).encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pdex-p2p requesting signing keys")
    return Fernet(base64.urlsafe_b64encode(derived.derive(secret)))


def seal(private_jwk: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(private_jwk).encode()).decode()


def unseal(sealed: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(sealed.encode()))
    except (InvalidToken, ValueError) as exc:
        raise KeyUnavailable("a signing key cannot be decrypted with P2P_KEY_ENCRYPTION_SECRET") from exc


def jwks_url() -> str:
    """Where payers fetch our public keys (registered as our jwks_uri)."""
    if settings.P2P_CLIENT_JWKS_URL:
        return settings.P2P_CLIENT_JWKS_URL
    parts = urlsplit(settings.FHIR_BASE_URL)
    return f"{parts.scheme}://{parts.netloc}/client/jwks.json"


def new_key(state: str, *, now: datetime, activate_after: datetime | None = None) -> SigningKey:
    private = generate_private_jwk(settings.P2P_KEY_ALG)
    [public] = public_jwks(private)["keys"]
    key = SigningKey.objects.create(kid=private["kid"], alg=private["alg"], state=state, public_jwk=public,
                                    private_jwk_sealed=seal(private), activate_after=activate_after,
                                    activated_at=now if state == SigningKey.State.ACTIVE else None)
    audit.record("signing-key", audit.SUCCESS, entity=f"SigningKey/{key.kid}", reason=f"created ({state})")
    return key


@transaction.atomic
def active_key(*, now: datetime | None = None) -> SigningKey:
    """The key we sign with; the first call on a new install creates it."""
    key = SigningKey.objects.select_for_update().filter(state=SigningKey.State.ACTIVE).order_by("-activated_at").first()
    return key or new_key(SigningKey.State.ACTIVE, now=now or timezone.now())


def signing_jwk() -> dict[str, Any]:
    """The private JWK of the active key, for a client assertion."""
    return unseal(active_key().private_jwk_sealed)


def jwks() -> dict[str, Any]:
    """Our public JWK Set: the active key and, during a roll-over, the next or the retired one."""
    keys = SigningKey.objects.filter(state__in=PUBLISHED).order_by("created_at")
    return {"keys": [key.public_jwk for key in keys]}


@transaction.atomic
def rotate(*, now: datetime | None = None, immediately: bool = False) -> SigningKey:
    """Begin a roll-over: publish a next key (it signs after P2P_KEY_PUBLISH_SECONDS, or at the next advance()
    when `immediately`). A roll-over already begun is returned as it is."""
    now = now or timezone.now()
    active_key(now=now)
    pending = SigningKey.objects.select_for_update().filter(state=SigningKey.State.NEXT).first()
    if pending is not None:
        return pending
    delay = timedelta(0) if immediately else timedelta(seconds=settings.P2P_KEY_PUBLISH_SECONDS)
    return new_key(SigningKey.State.NEXT, now=now, activate_after=now + delay)


@transaction.atomic
def advance(*, now: datetime | None = None) -> list[str]:
    """The roll-over's next steps that are due: a next key starts signing, retired keys are withdrawn."""
    now = now or timezone.now()
    done: list[str] = []
    for key in SigningKey.objects.select_for_update().filter(state=SigningKey.State.NEXT, activate_after__lte=now):
        for old in SigningKey.objects.select_for_update().filter(state=SigningKey.State.ACTIVE):
            old.state, old.retired_at = SigningKey.State.RETIRED, now
            old.withdraw_after = now + timedelta(seconds=settings.P2P_KEY_RETIRE_SECONDS)
            old.save(update_fields=["state", "retired_at", "withdraw_after"])
            done.append(f"retired {old.kid}")
        key.state, key.activated_at = SigningKey.State.ACTIVE, now
        key.save(update_fields=["state", "activated_at"])
        done.append(f"activated {key.kid}")
    for key in SigningKey.objects.select_for_update().filter(state=SigningKey.State.RETIRED, withdraw_after__lte=now):
        key.state, key.private_jwk_sealed = SigningKey.State.WITHDRAWN, ""
        key.save(update_fields=["state", "private_jwk_sealed"])
        done.append(f"withdrew {key.kid}")
    for step in done:
        audit.record("signing-key", audit.SUCCESS, entity=f"SigningKey/{step.split()[-1]}", reason=step.split()[0])
    return done
