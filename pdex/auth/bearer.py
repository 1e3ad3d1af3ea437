"""Bearer tokens for the FHIR API, read from the Authorization header only (RFC 6750 §2.1).

django-oauth-toolkit's DRF authentication hands oauthlib the whole request: the full URL (query string parsed
for an `access_token`) and the form body (`request.POST`). That parses a body before anyone knows who sent it
— a hostile body (wrong media type, malformed, huge) then fails inside authentication, where DRF does not
turn the error into an answer, and a 17 MB bulk request is parsed twice. We accept tokens in the header only
(RFC 6750 §2.2 and §2.3, form body and query, are optional and discouraged), so oauthlib sees just the header.

Kept free of pdex.fhir and DRF views: DRF imports its authentication classes while it builds APIView.
"""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from oauth2_provider.contrib.rest_framework import OAuth2Authentication


class _HeadersOnly:
    """The request as oauthlib should see it for a resource request: method, headers, a URL without query, no body."""

    def __init__(self, request: Any):
        object.__setattr__(self, "_wrapped", request)

    @property
    def POST(self) -> QueryDict:  # Django's name for the form body
        return QueryDict()

    @property
    def body(self) -> bytes:
        return b""

    def build_absolute_uri(self, location: str | None = None) -> str:
        return self._wrapped.build_absolute_uri(location if location is not None else self._wrapped.path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wrapped, name, value)


class BearerHeaderAuthentication(OAuth2Authentication):
    www_authenticate_realm = "fhir"

    def authenticate(self, request):
        if request is None:
            return None
        return super().authenticate(_HeadersOnly(request))
