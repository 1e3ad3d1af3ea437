"""FHIR reads, searches and $everything over the member data store."""

urlpatterns: list = []
