"""Routes of the requesting side: our JWKS (site root) and the Consent write endpoint (under /fhir/)."""

from django.urls import path

from requesting import views

urlpatterns = [
    path("client/jwks.json", views.client_jwks, name="client-jwks"),
    path("fhir/Consent", views.CollectedConsentView.as_view(), name="collected-consent"),
    path("fhir/Consent/<str:consent_id>", views.CollectedConsentReadView.as_view(), name="collected-consent-read"),
]
