"""Where clients find us: endpoint URLs, the SMART configuration and the CapabilityStatement's security."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from pdex.auth import scopes
from pdex.auth.jwks import ALGORITHMS

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def token_endpoint_url() -> str:
    """The token endpoint's absolute URL: the only `aud` a client assertion may carry."""
    return settings.TOKEN_ENDPOINT_URL or _origin(settings.FHIR_BASE_URL) + "/oauth/token"


def registration_endpoint_url() -> str:
    return _origin(token_endpoint_url()) + "/oauth/register"


def smart_configuration() -> dict[str, Any]:
    """GET [base]/.well-known/smart-configuration for a backend-services-only server (spec §8.2)."""
    return {
        "token_endpoint": token_endpoint_url(),
        "registration_endpoint": registration_endpoint_url(),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": list(scopes.SUPPORTED),
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
        "code_challenge_methods_supported": ["S256"],
    }


def capability_security() -> dict[str, Any]:
    """CapabilityStatement.rest.security: the SMART service coding and the legacy oauth-uris extension."""
    return {
        "extension": [{
            "url": OAUTH_URIS,
            "extension": [
                {"url": "token", "valueUri": token_endpoint_url()},
                {"url": "register", "valueUri": registration_endpoint_url()},
            ],
        }],
        "service": [{
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 client credentials with private_key_jwt (SMART Backend Services)",
        }],
        "description": "Every FHIR interaction except /metadata needs a bearer token from the token endpoint; "
                       "see .well-known/smart-configuration.",
    }
