"""OAuth2 endpoints (mounted at the site root) and SMART discovery under the FHIR base."""

from django.urls import path

from pdex.auth import views

urlpatterns = [
    path("oauth/token", views.TokenView.as_view(), name="oauth-token"),
    path("oauth/register", views.RegistrationView.as_view(), name="oauth-register"),
    path("fhir/.well-known/smart-configuration", views.smart_configuration, name="smart-configuration"),
]
