"""HMAC-signed, expiring download URLs for files our web process serves (file storage, presigned manifests).

The signature covers the file id and the expiry instant, keyed from SECRET_KEY with a salt of its own, so a
URL cannot be stretched in time or pointed at another file, and rotating SECRET_KEY revokes every URL.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from uuid import UUID

from django.utils import timezone
from django.utils.crypto import salted_hmac

SALT = "exports.signing.bulkfile"  # unchanged since the module moved: live URLs stay valid


def signature(file_id: UUID | str, expires: int) -> str:
    """Hex HMAC-SHA256 of `file_id:expires` (expires in Unix seconds)."""
    return salted_hmac(SALT, f"{file_id}:{int(expires)}", algorithm="sha256").hexdigest()


def sign(file_id: UUID | str, *, expires_in: int, now: datetime | None = None) -> tuple[int, str]:
    """(expires, signature) for a URL that stops working `expires_in` seconds from `now`."""
    expires = int(((now or timezone.now()) + timedelta(seconds=expires_in)).timestamp())
    return expires, signature(file_id, expires)


def verify(file_id: UUID | str, expires: str | int | None, sig: str | None, *, now: datetime | None = None) -> bool:
    """True when `sig` is ours for this file and expiry, and the expiry is still ahead."""
    try:
        expires = int(expires)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if not sig or expires <= int((now or timezone.now()).timestamp()):
        return False
    return hmac.compare_digest(signature(file_id, expires), sig)
