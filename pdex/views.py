"""Public endpoints: CapabilityStatement and health probes."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views import csrf
from rest_framework.request import Request
from rest_framework.response import Response

from pdex.capability import capability_statement
from pdex.fhir import PublicFhirView, api_error_response, is_api_path
from pdex.jobs.storage import get_storage


class MetadataView(PublicFhirView):
    def get(self, request: Request) -> Response:
        return Response(capability_statement())


def healthz(request) -> JsonResponse:
    """Alive: the process answers. Nothing else is checked, so a slow database never restarts web."""
    return JsonResponse({"status": "ok"})


def readyz(request) -> JsonResponse:
    """Ready: PostgreSQL, Redis and export storage all reachable."""
    checks: dict[str, str] = {}

    def probe(name: str, check) -> None:
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; the name says which
            checks[name] = f"unavailable: {type(exc).__name__}"

    def database() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def broker() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    probe("database", database)
    probe("redis", broker)
    probe("storage", lambda: get_storage().check())
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


def csrf_failure(request, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON on the API's paths (OperationOutcome under /fhir/), Django's page elsewhere."""
    if is_api_path(request.path):
        return api_error_response(request, 403, "CSRF verification failed; this endpoint takes no form posts.")
    return csrf.csrf_failure(request, reason)
