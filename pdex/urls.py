"""OAuth2 endpoints and the FHIR resources of the pdex app."""

urlpatterns: list = []
