"""What single-member retrieval adds to the CapabilityStatement: read and search per exported type,
their search parameters, _include/_revinclude, and Patient/$everything. Imported by exports.retrieval.fhir_urls, so it
registers when the URLs load (only what is routed is listed)."""

from __future__ import annotations

from exports import rules
from exports.retrieval import search
from exports.retrieval.views import PATIENT_EVERYTHING
from pdex import capability


def register() -> None:
    for resource_type in rules.EXPORT_TYPES:
        if resource_type in search.SEARCHABLE_TYPES:
            capability.register_interactions(resource_type, "read", "search-type")
            for name, type_ in search.searchable_params(resource_type):
                capability.register_search_param(resource_type, name, type_)
            capability.register_search_includes(
                resource_type, *(f"{resource_type}:{name}" for name in search.INCLUDE_PARAMS.get(resource_type, ())))
            capability.register_search_includes(resource_type, search.REVINCLUDE_PROVENANCE, reverse=True)
        else:
            capability.register_interactions(resource_type, "read")
    capability.register_operation("Patient", "everything", PATIENT_EVERYTHING)
    capability.register_interactions("Binary", "read")  # an attachment, under its DocumentReference's rule


register()
