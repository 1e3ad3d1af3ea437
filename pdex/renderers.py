"""FHIR JSON media types for DRF. Kept apart from pdex.fhir: DRF imports these while building APIView."""

from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"


class FhirJsonRenderer(JSONRenderer):
    media_type = FHIR_JSON
    format = "json"
    charset = "utf-8"


class JsonRenderer(JSONRenderer):
    """Plain application/json, which FHIR servers must also accept (and Bulk Data manifests use)."""

    media_type = "application/json"
    format = "application/json"
    charset = "utf-8"


class FhirJsonParser(JSONParser):
    media_type = FHIR_JSON


class JsonParser(JSONParser):
    media_type = "application/json"
