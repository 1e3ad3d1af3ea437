from django.apps import AppConfig
from django.utils.module_loading import import_string

from consent.signals import sharing_ended
from exports.kind import EXPORT
from exports.metrics import export_families
from pdex import capability, metrics
from pdex.jobs import kinds

DAVINCI_DATA_EXPORT = "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"
GROUP_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
PATIENT_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
SYSTEM_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"


def withdraw_on_sharing_ended(sender, **kwargs) -> None:
    """exports.withdrawal.on_sharing_ended, looked up when called: this module loads before the models."""
    import_string("exports.withdrawal.on_sharing_ended")(sender, **kwargs)


class ExportsConfig(AppConfig):
    name = "exports"
    verbose_name = "Bulk exports"

    def ready(self) -> None:
        """Tell /metadata which export operations exist (spec §7.8), and the job engine what an export is."""
        metrics.register(export_families)
        kinds.register(EXPORT)
        # A revocation or member block withdraws the completed exports that hold the member (docs/consent.md).
        sharing_ended.connect(withdraw_on_sharing_ended, dispatch_uid="exports-withdraw")

        capability.register_operation("Group", "davinci-data-export", DAVINCI_DATA_EXPORT)
        capability.register_operation("Group", "export", GROUP_EXPORT)
        capability.register_operation("Patient", "export", PATIENT_EXPORT)
        capability.register_operation(None, "export", SYSTEM_EXPORT)
        capability.register_instantiates(BULK_DATA_CAPABILITY)
