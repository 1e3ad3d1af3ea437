from django.apps import AppConfig

from exports.kind import EXPORT
from exports.metrics import export_families
from pdex import capability, metrics
from pdex.jobs import kinds

DAVINCI_DATA_EXPORT = "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"
GROUP_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
PATIENT_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
SYSTEM_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"


class ExportsConfig(AppConfig):
    name = "exports"
    verbose_name = "Bulk exports"

    def ready(self) -> None:
        """Tell /metadata which export operations exist (spec §7.8), and the job engine what an export is."""
        metrics.register(export_families)
        kinds.register(EXPORT)

        capability.register_operation("Group", "davinci-data-export", DAVINCI_DATA_EXPORT)
        capability.register_operation("Group", "export", GROUP_EXPORT)
        capability.register_operation("Patient", "export", PATIENT_EXPORT)
        capability.register_operation(None, "export", SYSTEM_EXPORT)
        capability.register_instantiates(BULK_DATA_CAPABILITY)
