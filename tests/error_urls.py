"""A URLconf for tests/test_fhir_edge.py: the project's routes plus views that fail on purpose."""

from django.urls import path
from rest_framework.response import Response

from config.urls import urlpatterns as project_urlpatterns
from pdex.fhir import BadRequest, FhirView, TooManyRequests, Unprocessable


class EchoView(FhirView):
    """Accepts FHIR JSON; needs a Group read scope."""

    required_scopes = ("system/Group.rs",)

    def get(self, request):
        return Response({"resourceType": "Basic", "id": "ok"})

    def post(self, request):
        if request.data.get("resourceType") != "Parameters":
            raise Unprocessable("Body must be a Parameters resource.")
        return Response(request.data)


class FailingView(FhirView):
    required_scopes = ()

    def get(self, request, kind):
        if kind == "bad-request":
            raise BadRequest("Unknown parameter: _foo.")
        if kind == "throttled":
            raise TooManyRequests("Slow down.", retry_after=7)
        raise RuntimeError("boom: secret detail that must not leak")


def plain_django_view(request):
    raise RuntimeError("boom outside DRF")


urlpatterns = [
    path("fhir/_test/echo", EchoView.as_view()),
    path("fhir/_test/fail/<str:kind>", FailingView.as_view()),
    path("fhir/_test/plain", plain_django_view),
    *project_urlpatterns,
]
