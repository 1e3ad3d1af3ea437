"""The requesting side's HTTP endpoints: our public keys, and the Consent write endpoint for our own
enrollment systems (never for partners: requesting.enrollment)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.utils.http import http_date
from django.views.decorators.http import require_GET

from pdex.extract import format_instant
from pdex.fhir import FhirView, NotFound, fhir_json_response
from requesting import consents, keys
from requesting.enrollment import EnrollmentSystemOnly, system_name
from requesting.models import CollectedConsent

JWKS_MAX_AGE = 300  # payers may cache our keys this long; a roll-over publishes a new key well before it signs


@require_GET
def client_jwks(request: HttpRequest) -> JsonResponse:
    """GET /client/jwks.json: the public keys our client assertions are signed with (public, cacheable)."""
    response = JsonResponse(keys.jwks())
    response["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


def as_fhir(consent: CollectedConsent) -> dict:
    """The Consent as we hold it: our HRex resource, `inactive` once revoked."""
    resource = dict(consent.resource)
    resource["id"] = str(consent.pk)
    resource["meta"] = {**resource.get("meta", {}), "lastUpdated": format_instant(consent.updated_at)}
    if consent.status == CollectedConsent.Status.REVOKED:
        resource["status"] = "inactive"
    return resource


class CollectedConsentView(FhirView):
    """POST /fhir/Consent: record (status active) or revoke (status inactive) a member's consent for a previous
    payer; 201 when new, 200 when it replaced or revoked one."""

    permission_classes = [EnrollmentSystemOnly]
    audit_action, audit_entity = "consent-collect", "Consent"

    def post(self, request):
        recorded = consents.collect_from_fhir(request.data, actor=f"enrollment system {system_name(request.auth)}",
                                              request=request)
        location = f"{request.build_absolute_uri('/fhir/Consent/')}{recorded.consent.pk}"
        return fhir_json_response(as_fhir(recorded.consent), status=201 if recorded.created else 200,
                                  headers={"Location": location})


class CollectedConsentReadView(FhirView):
    """GET /fhir/Consent/{id}: a consent we collected, for the enrollment system that keeps track of it."""

    permission_classes = [EnrollmentSystemOnly]
    audit_action, audit_entity = "consent-read", "Consent/{consent_id}"

    def get(self, request, consent_id: str):
        # Our ids are bigints: anything longer than 18 digits is no id of ours (and would overflow the query).
        ours = consent_id.isdecimal() and len(consent_id) < 19
        consent = CollectedConsent.objects.filter(pk=consent_id).first() if ours else None
        if consent is None:
            raise NotFound(f"No Consent {consent_id}.")
        return fhir_json_response(as_fhir(consent),
                                  headers={"Last-Modified": http_date(consent.updated_at.timestamp())})
