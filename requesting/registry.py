"""The previous payers we talk to: found by their SMART configuration and CapabilityStatement, and our
registration with each — RFC 7591 dynamic registration with our JWKS URL when they offer it, or a client id an
admin enters (registered out of band)."""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pdex import audit
from requesting import keys
from requesting.client import REQUEST_SCOPES, PayerClient, Refused, Transient, discover
from requesting.models import PreviousPayer

# The operations a pull uses, by the names a CapabilityStatement gives them.
PULL_OPERATIONS = ("bulk-member-match", "member-match", "davinci-data-export", "export")


class RegistrationFailed(RuntimeError):
    """The payer refused our registration (its RFC 7591 error and description), or offers none."""


def operations_of(capability: dict[str, Any]) -> list[str]:
    """The operation names a CapabilityStatement lists, at any level."""
    names: set[str] = set()
    for rest in capability.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        for operation in rest.get("operation") or []:
            if isinstance(operation, dict) and operation.get("name"):
                names.add(str(operation["name"]))
        for resource in rest.get("resource") or []:
            for operation in (resource.get("operation") or []) if isinstance(resource, dict) else []:
                if isinstance(operation, dict) and operation.get("name"):
                    names.add(str(operation["name"]))
    return sorted(names)


def refresh_discovery(payer: PreviousPayer) -> PreviousPayer:
    """Read the payer's SMART configuration and CapabilityStatement again; the error is kept when it fails."""
    try:
        smart, capability = discover(payer.fhir_base)
    except (requests.RequestException, ValueError) as exc:
        payer.discovery_error = f"{type(exc).__name__}: {exc}"[:1000]
        payer.save(update_fields=["discovery_error", "updated_at"])
        raise RegistrationFailed(f"discovery of {payer.fhir_base} failed: {payer.discovery_error}") from exc
    payer.token_endpoint = str(smart.get("token_endpoint") or "")
    payer.registration_endpoint = str(smart.get("registration_endpoint") or "")
    payer.signing_algorithms = list(smart.get("token_endpoint_auth_signing_alg_values_supported") or [])
    payer.operations = operations_of(capability if isinstance(capability, dict) else {})
    payer.discovered_at, payer.discovery_error = timezone.now(), ""
    payer.save()
    return payer


def add_previous_payer(*, name: str, npi: str, fhir_base_url: str, member_id_system: str = "",
                       discover_now: bool = True, actor: str = "admin") -> PreviousPayer:
    """A new payer in the registry, discovered at once unless told not to."""
    payer = PreviousPayer.objects.create(name=name, npi=npi, fhir_base_url=fhir_base_url.rstrip("/"),
                                         member_id_system=member_id_system)
    audit.record("previous-payer", audit.SUCCESS, entity=f"PreviousPayer/{payer.pk}", reason=f"added by {actor}")
    if discover_now:
        refresh_discovery(payer)
    return payer


def registration_request(payer: PreviousPayer) -> dict[str, Any]:
    """Our RFC 7591 client metadata: private_key_jwt with our JWKS URL (so keys rotate without re-registering)."""
    metadata: dict[str, Any] = {
        "client_name": settings.PAYER_NAME, "jwks_uri": keys.jwks_url(), "scope": REQUEST_SCOPES,
        "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"],
        "npi": settings.PAYER_NPI,
    }
    if settings.P2P_CONTACT_EMAIL:
        metadata["contacts"] = [settings.P2P_CONTACT_EMAIL]
    if payer.software_statement:
        metadata["software_statement"] = payer.software_statement
    return metadata


def register_dynamically(payer: PreviousPayer, *, actor: str = "admin") -> PreviousPayer:
    """POST our client metadata to the payer's registration endpoint; its client id is ours from then on.

    The payer may keep the registration pending until its admin approves it: tokens are refused meanwhile, and
    `check_connection` says so.
    """
    if not payer.registration_endpoint:
        refresh_discovery(payer)
    if not payer.registration_endpoint:
        raise RegistrationFailed(f"{payer.name} offers no dynamic registration; enter the client id it gave us")
    keys.active_key()
    try:
        response = requests.post(payer.registration_endpoint, json=registration_request(payer),
                                 headers={"Accept": "application/json"}, timeout=settings.P2P_HTTP_TIMEOUT_SECONDS)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise RegistrationFailed(f"registration with {payer.name} failed: {type(exc).__name__}") from exc
    if response.status_code != 201 or not isinstance(body, dict) or not body.get("client_id"):
        error = body.get("error", response.status_code) if isinstance(body, dict) else response.status_code
        description = body.get("error_description", "") if isinstance(body, dict) else ""
        PreviousPayer.objects.filter(pk=payer.pk).update(last_error=f"registration: {error} {description}"[:1000])
        audit.record("previous-payer-register", audit.REFUSED, entity=f"PreviousPayer/{payer.pk}",
                     reason=f"{error}", detail={"description": str(description)[:300]})
        raise RegistrationFailed(f"{payer.name} refused our registration: {error} {description}".strip())
    with transaction.atomic():
        payer.registration, payer.client_id = PreviousPayer.Registration.DYNAMIC, str(body["client_id"])
        payer.granted_scope, payer.registered_at, payer.last_error = str(body.get("scope", "")), timezone.now(), ""
        payer.save()
    audit.record("previous-payer-register", audit.SUCCESS, entity=f"PreviousPayer/{payer.pk}",
                 reason=f"registered dynamically by {actor}", detail={"client_id": payer.client_id})
    return payer


def set_client_id(payer: PreviousPayer, client_id: str, *, actor: str = "admin") -> PreviousPayer:
    """A registration made out of band: the payer gave us a client id for our JWKS URL."""
    payer.registration, payer.client_id = PreviousPayer.Registration.MANUAL, client_id.strip()
    payer.registered_at, payer.last_error = timezone.now(), ""
    payer.save()
    audit.record("previous-payer-register", audit.SUCCESS, entity=f"PreviousPayer/{payer.pk}",
                 reason=f"client id entered by {actor}", detail={"client_id": payer.client_id})
    return payer


def check_connection(payer: PreviousPayer) -> str:
    """Ask for a token: what an admin sees after registering ("ok", or why not)."""
    try:
        PayerClient(payer).token(fresh=True)
    except (Refused, Transient) as exc:
        return str(exc)
    return "ok"
