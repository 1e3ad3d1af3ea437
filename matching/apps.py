from django.apps import AppConfig

from matching.kind import MATCH
from matching.metrics import match_families
from pdex import capability, metrics
from pdex.jobs import kinds


class MatchingConfig(AppConfig):
    name = "matching"
    verbose_name = "Member match"

    def ready(self) -> None:
        """Tell /metadata what this app serves (the two match operations, Group read/search), and the job
        engine what a bulk member match is."""
        metrics.register(match_families)
        kinds.register(MATCH)

        capability.register_operation(
            "Patient", "member-match", "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match")
        capability.register_operation(
            "Group", "bulk-member-match", "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch")
        capability.register_interactions("Group", "read", "search-type")
        capability.register_profiles(
            "Group", "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group",
            "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-no-match-group")
        for name, type_, definition in (
            ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
            ("_lastUpdated", "date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
            ("identifier", "token", "http://hl7.org/fhir/SearchParameter/Group-identifier"),
            ("code", "token", "http://hl7.org/fhir/us/davinci-pdex/SearchParameter/group-code"),
            ("characteristic", "token", "http://hl7.org/fhir/SearchParameter/Group-characteristic"),
            ("characteristic-value-reference", "reference",
             "http://hl7.org/fhir/us/davinci-pdex/SearchParameter/pdex-group-characteristic-value-reference"),
            ("name", "string", ""),
        ):
            capability.register_search_param("Group", name, type_, definition)
