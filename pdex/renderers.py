"""FHIR JSON media types for DRF. Kept apart from pdex.fhir: DRF imports these while building APIView."""

from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

from pdex.jsonbody import read_json

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


class JsonParser(BaseParser):
    """Every JSON body through the one reader (pdex.jsonbody): size, depth, UTF-8 and string rules; a refusal
    raises jsonbody.BodyError, which pdex.fhir's exception handler answers as an OperationOutcome."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        meta = getattr(request, "META", {}) if request is not None else {}
        return read_json(stream, content_length=meta.get("CONTENT_LENGTH"))


class FhirJsonParser(JsonParser):
    media_type = FHIR_JSON
