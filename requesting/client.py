"""HTTP to a previous payer's FHIR API: tokens, kick-offs, status polls and downloads, as Bulk Data asks.

The one place the requesting side talks to another payer. Tokens come from SMART Backend Services
(pdex.auth.client) signed with our active key and are shared by our workers through the cache until just
before they expire. Every answer is classified for the job engine: done, come back later (202 / 429 with
Retry-After: `engine.Deferred`), retry with back-off (a transient failure: any other exception), or a
refusal that will not change by retrying (`Refused`, which fails the pull with the payer's reason).
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from pdex.auth.client import TokenRequestFailed, request_token
from pdex.jobs.engine import Deferred
from requesting import keys
from requesting.models import PreviousPayer

log = logging.getLogger(__name__)

# What we ask every previous payer for: both match operations, and read of what they export.
REQUEST_SCOPES = ("system/*.read http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match "
                  "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch")
FHIR_JSON = "application/fhir+json"
DOWNLOAD_BLOCK = 1024 * 1024
TRANSIENT_STATUS = {408, 500, 502, 503, 504}
BEAT_SECONDS = 10


class Refused(RuntimeError):
    """The previous payer refused in a way retrying will not change: the pull fails with this reason."""

    def __init__(self, what: str, status: int, diagnostics: str = ""):
        super().__init__(f"{what}: {status} {diagnostics}".strip()[:1000])
        self.status = status
        self.diagnostics = diagnostics


class Transient(RuntimeError):
    """A failure worth another attempt (the engine backs off and counts it)."""


def diagnostics_of(response: requests.Response) -> str:
    """The payer's own words: an OperationOutcome's diagnostics, an OAuth error, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        issues = body.get("issue") if isinstance(body.get("issue"), list) else []
        texts = [str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", ""))
                 for i in issues if isinstance(i, dict)]
        if texts:
            return "; ".join(texts)[:500]
        if body.get("error"):
            return f"{body['error']}: {body.get('error_description', '')}"[:500]
    return str(body)[:300]


def retry_after_seconds(value: str | None, *, default: float, now: datetime | None = None) -> float:
    """Retry-After as seconds (it may be a number or an HTTP-date), bounded to [1, P2P_MAX_RETRY_AFTER_SECONDS]."""
    seconds = default
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                seconds = (when - (now or datetime.now(UTC))).total_seconds()
            except (TypeError, ValueError):
                seconds = default
    return min(max(seconds, 1.0), float(settings.P2P_MAX_RETRY_AFTER_SECONDS))


@dataclass(frozen=True)
class Poll:
    """One look at a status URL: the manifest when done; else what X-Progress said and when to look again."""

    manifest: dict[str, Any] | None
    progress: str = ""
    retry_after: float = 0.0


class PayerClient:
    """One previous payer's API, as our registered client there."""

    def __init__(self, payer: PreviousPayer, *, session: requests.Session | None = None):
        self.payer = payer
        self.session = session or requests.Session()

    # --- tokens ------------------------------------------------------------------------------------

    def _token_key(self) -> str:
        return f"p2p-token:{self.payer.pk}:{self.payer.client_id}"

    def token(self, *, fresh: bool = False) -> str:
        """A bearer token from the payer's token endpoint, shared through the cache until 30 s before expiry."""
        if not self.payer.can_pull:
            raise Refused(f"{self.payer.name}", 0, "we are not registered with this payer (no client id) or it "
                                                   "is not active")
        if not fresh:
            cached = cache.get(self._token_key())
            if cached:
                return cached
        try:
            answer = request_token(self.payer.token_endpoint, self.payer.client_id, keys.signing_jwk(), REQUEST_SCOPES,
                                   session=self.session, timeout=settings.P2P_HTTP_TIMEOUT_SECONDS)
        except TokenRequestFailed as exc:
            PreviousPayer.objects.filter(pk=self.payer.pk).update(last_error=str(exc)[:1000])
            if exc.status in TRANSIENT_STATUS:
                raise Transient(str(exc)) from exc
            # invalid_client: our registration is pending their approval, or was suspended.
            raise Refused("token request", exc.status, f"{exc.error} {exc.description}".strip()) from exc
        except requests.RequestException as exc:
            raise Transient(f"token endpoint unreachable: {type(exc).__name__}") from exc
        token = answer["access_token"]
        lifetime = int(answer.get("expires_in") or 300)
        if lifetime > 60:
            cache.set(self._token_key(), token, lifetime - 30)
        PreviousPayer.objects.filter(pk=self.payer.pk).update(last_token_at=timezone.now(), last_error="")
        return token

    # --- requests ----------------------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.payer.fhir_base}/{path_or_url}"

    def request(self, method: str, path_or_url: str, *, authorized: bool = True, **kwargs: Any) -> requests.Response:
        """One call; a 401 gets one fresh token and one more try (the cached token may have been revoked)."""
        headers = {"Accept": FHIR_JSON, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", settings.P2P_HTTP_TIMEOUT_SECONDS)
        for attempt in (1, 2):
            if authorized:
                headers["Authorization"] = f"Bearer {self.token(fresh=attempt == 2)}"
            try:
                response = self.session.request(method, self.url(path_or_url), headers=headers, **kwargs)
            except requests.RequestException as exc:
                raise Transient(f"{method} {path_or_url}: {type(exc).__name__}") from exc
            if response.status_code != 401 or not authorized or attempt == 2:
                return response
            response.close()
        raise AssertionError("unreachable")

    def answer(self, response: requests.Response, what: str) -> None:
        """Raise for anything but success: Deferred for 429, Transient for 5xx, Refused for the rest."""
        if response.status_code == 429:
            raise Deferred(retry_after_seconds(response.headers.get("Retry-After"),
                                               default=settings.P2P_DEFAULT_RETRY_SECONDS),
                           note=f"{what}: 429 {diagnostics_of(response)}"[:300])
        if response.status_code in TRANSIENT_STATUS:
            raise Transient(f"{what}: {response.status_code} {diagnostics_of(response)}")
        if response.status_code >= 400:
            raise Refused(what, response.status_code, diagnostics_of(response))

    def kick_off(self, path: str, parameters: dict[str, Any]) -> str:
        """POST an asynchronous operation (Prefer: respond-async); the status URL of its 202."""
        response = self.request("POST", path, json=parameters,
                                headers={"Prefer": "respond-async", "Content-Type": FHIR_JSON})
        self.answer(response, f"POST {path}")
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise Refused(f"POST {path}", response.status_code, "expected 202 Accepted with a Content-Location")
        return location

    def operation(self, path: str, parameters: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST a synchronous operation ($member-match): the status and the JSON body."""
        response = self.request("POST", path, json=parameters, headers={"Content-Type": FHIR_JSON})
        if response.status_code not in (200, 422):
            self.answer(response, f"POST {path}")
        try:
            return response.status_code, response.json()
        except ValueError as exc:
            raise Transient(f"POST {path}: the answer is not JSON") from exc

    def poll(self, status_url: str) -> Poll:
        """GET the status URL once (spec §7.3): the manifest, or while it runs X-Progress and Retry-After (a 429
        is Deferred by its Retry-After)."""
        response = self.request("GET", status_url, headers={"Accept": "application/json"})
        progress = response.headers.get("X-Progress", "")[:100]
        if response.status_code == 202:
            return Poll(manifest=None, progress=progress, retry_after=retry_after_seconds(
                response.headers.get("Retry-After"), default=settings.P2P_DEFAULT_RETRY_SECONDS))
        self.answer(response, "status")
        if response.status_code != 200:
            raise Refused("status", response.status_code, "expected 200 with the manifest")
        try:
            manifest = response.json()
        except ValueError as exc:
            raise Transient("the manifest is not JSON") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise Refused("status", 200, "the manifest has no output array")
        return Poll(manifest=manifest, progress=progress)

    def forget(self, status_url: str) -> None:
        """DELETE a finished job's status URL: we have its files, they may go (spec §7.5). Best effort."""
        try:
            self.request("DELETE", status_url).close()
        except (Transient, Refused) as exc:
            log.info("could not delete %s: %s", status_url, exc)

    def download(self, url: str, destination: Path, *, with_token: bool,
                 beat: Callable[[], None] = lambda: None) -> int:
        """Stream one file to `destination` (bounded memory); the number of non-empty lines written.
        `beat` is called every few seconds (the unit's lease heartbeat)."""
        headers = {"Accept": "application/fhir+ndjson"}
        with self.streamed("GET", url, authorized=with_token, headers=headers) as response:
            self.answer(response, "download")
            lines, tail, last_beat = 0, b"", time.monotonic()
            every = min(BEAT_SECONDS, settings.JOB_LEASE_SECONDS / 3)
            with destination.open("wb") as out:
                for block in response.iter_content(DOWNLOAD_BLOCK):
                    if time.monotonic() - last_beat > every:
                        beat()
                        last_beat = time.monotonic()
                    out.write(block)
                    data = tail + block
                    lines += sum(1 for line in data.split(b"\n")[:-1] if line.strip())
                    tail = data.rsplit(b"\n", 1)[-1]
                if tail.strip():
                    out.write(b"\n")
                    lines += 1
        return lines

    def ndjson(self, url: str, *, with_token: bool) -> list[dict[str, Any]]:
        """A small NDJSON file (the match Groups, an error file) as parsed lines."""
        headers = {"Accept": "application/fhir+ndjson"}
        with self.streamed("GET", url, authorized=with_token, headers=headers) as response:
            self.answer(response, "download")
            try:
                return [json.loads(line) for line in response.iter_lines() if line.strip()]
            except ValueError as exc:
                raise Refused("download", response.status_code, "a line of the file is not JSON") from exc

    @contextmanager
    def streamed(self, method: str, url: str, **kwargs: Any) -> Iterator[requests.Response]:
        response = self.request(method, url, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()


def discover(base: str, *, session: requests.Session | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A payer's SMART configuration and CapabilityStatement (both public)."""
    session = session or requests.Session()
    timeout = settings.P2P_HTTP_TIMEOUT_SECONDS
    started = time.monotonic()
    smart = session.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"},
                        timeout=timeout)
    smart.raise_for_status()
    metadata = session.get(f"{base}/metadata", headers={"Accept": FHIR_JSON}, timeout=timeout)
    metadata.raise_for_status()
    log.info("discovered %s in %.2f s", base, time.monotonic() - started)
    return smart.json(), metadata.json()
