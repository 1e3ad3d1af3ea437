"""The hostile-input suite's parts: the world it attacks, the requests it generates, what each answer must be.

Used by tests/test_hostile_input.py (bounded, through Django's test client, in `make test`) and by
scripts/hostile.py (`make test-hostile`: thousands of requests against a live gunicorn on config/gunicorn.py).

- `endpoints()` enumerates the URL conf (everything but the admin), so a new endpoint is attacked without
  anyone adding it here.
- `hostile_requests(world)` is a Hypothesis strategy: every endpoint, any method, with and without a token
  (partner A's, partner B's, an expired-looking or garbage one), odd ids (U+0000, too long, non-ASCII, path
  tricks, huge numbers) or the other partner's real ones, odd query parameters (repeated, U+0000, dates
  outside what Python or PostgreSQL hold, huge numbers), wrong content types and bodies — malformed JSON,
  wrong shapes, Parameters with wrong value types, nesting past the depth limit, bodies past the size limit.
- `problems(answer)`: a 5xx; an HTML body, or an error body that is not JSON, under /fhir/ and /oauth/.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import strategies as st

from matching import jobs
from matching.models import MatchJob, MemberMatchGroup
from pdex.jobs.models import OutputFile
from pdex.models import Partner
from tests.builders import (
    EXAMPLE_PARTNER_NPI,
    bulk_match_request,
    consent_for,
    days_ago,
    encounter,
    example_members,
    observation,
    store,
)

FHIR_TYPES = ("Patient", "Coverage", "Observation", "Encounter", "Condition", "ExplanationOfBenefit", "Organization")
SEARCH_NAMES = ("_id", "patient", "_type", "_since", "_until", "_typeFilter", "_elements", "_count", "_page",
                "_offset", "start", "end", "date", "service-date", "_lastUpdated", "identifier", "name", "code",
                "status", "category", "characteristic", "_outputFormat", "patient:Patient", "includeAssociatedData",
                "grant_type", "client_assertion", "client_assertion_type", "scope")
ODD_IDS = ("\x00", "%00", "a" * 65, "a" * 64, "..", ".", "-", "_search", "$everything", "Patient", "\u202e", "é",
           "ÿ", "\ud800", "' OR 1=1--", "1; DROP TABLE x", "99999999999999999999999", "-1", "0", "ab/cd", "a%2Fb",
           "\r\nX: y", "<script>", "{}", "null", "*")
ODD_DATES = ("9999-12-31", "9999", "9999-12-31T23:59:59-05:00", "0000-01-01", "0001-01-01T00:00:00+14:00",
             "2024-02-30", "2024-13", "99999", "2024-01-01T25:00:00Z", "2024-01-01T00:00:00", "1e999", "",
             "2024-01-01T00:00:00.9999999999Z", "-2024-01-01", "２０２４", "2024-01-01T00:00:00+99:00", "\x00")
DATE_PREFIXES = ("", "gt", "lt", "ge", "le", "eq", "ne", "sa", "eb", "ap", "zz")
CONTENT_TYPES = ("application/fhir+json", "application/json", "application/x-www-form-urlencoded", "text/plain",
                 "multipart/form-data; boundary=xyz", "application/fhir+json; charset=latin-1",
                 "application/json; charset=utf-16", "application/xml", "", "*/*", "application/fhir+ndjson")
ACCEPTS = ("application/fhir+json", "application/json", "text/html", "*/*", "application/xml", "", "\x7f",
           "application/fhir+ndjson", "text/html;q=0.9, application/json;q=0.1")
PREFERS = ("respond-async", "handling=lenient", "respond-async, handling=lenient", "respond-async, priority=urgent",
           "handling=strict", "", "respond-async;;;,,,")
PARAMETER_NAMES = ("MemberPatient", "CoverageToMatch", "CoverageToLink", "Consent", "MemberBundle", "_type",
                   "_since", "start", "end", "_count", "_elements", "_typeFilter", "patient", "exportType")


@dataclass(frozen=True)
class Endpoint:
    """One route of the URL conf: how to build its path from values for its parameters."""

    name: str
    parts: tuple[tuple[str, str], ...]  # ("text", "fhir/Group/") or ("param", "group_id") / ("choice", "A|B")


@dataclass
class World:
    """What the attack knows: two partners' tokens, and partner A's real object ids (for B to try)."""

    tokens: dict[str, str]
    group_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    resource_ids: dict[str, list[str]] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    file_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Attack:
    method: str
    path: str  # percent-encoded, with the query string
    headers: dict[str, str]
    body: bytes
    content_type: str

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]


# --- the URL conf ----------------------------------------------------------------------------------------------

_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>([^)]*)\)")


def endpoints() -> list[Endpoint]:
    """Every route but the admin's, in order."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, text)
            elif isinstance(pattern, URLPattern) and not text.startswith("admin"):
                found.append(Endpoint(pattern.name or text, tuple(_parts(text))))

    walk(get_resolver().url_patterns, "")
    return found


def _parts(template: str) -> list[tuple[str, str]]:
    template = template.replace("^", "").replace("$", "$").rstrip("$") if "(?P<" in template else template
    if "(?P<" in template:
        parts: list[tuple[str, str]] = []
        position = 0
        for match in _NAMED_GROUP.finditer(template):
            parts.append(("text", template[position:match.start()]))
            name, body = match.groups()
            parts.append(("choice", body) if "|" in body else ("param", name))
            position = match.end()
        parts.append(("text", template[position:]))
        return [(kind, value.replace("\\", "")) if kind == "text" else (kind, value) for kind, value in parts]
    parts = []
    for piece in re.split(r"(<[^>]+>)", template):
        if piece.startswith("<"):
            converter, _, name = piece[1:-1].partition(":")
            parts.append(("param", f"{converter}:{name}" if name else piece[1:-1]))
        elif piece:
            parts.append(("text", piece))
    return parts


# --- the world ---------------------------------------------------------------------------------------------------

def build_world(make_partner, issue_token) -> World:
    """Partner A with a consented member, data, Groups, a finished bulk match job and its files; partner B with
    every scope and nothing of its own. Runs the match job in this process (no worker needed)."""
    a = make_partner("Hostile A", npi=EXAMPLE_PARTNER_NPI)
    b = make_partner("Hostile B", npi="1999999999")
    members = example_members()
    patient = members["pat-1001"]
    consent_for(patient, a)
    observations = [store(observation(f"hostile-obs-{n}", patient.fhir_id, days_ago(30 + n)), patient)
                    for n in range(3)]
    encounters = [store(encounter(f"hostile-enc-{n}", patient.fhir_id, days_ago(40 + n)), patient) for n in range(2)]
    client = Client()
    response = client.post("/fhir/Group/$bulk-member-match", data=json.dumps(bulk_match_request()),
                           content_type="application/fhir+json", headers={
                               "Authorization": f"Bearer {issue_token(a)}", "Prefer": "respond-async"})
    assert response.status_code == 202, response.content
    job = MatchJob.objects.get(partner=a)
    for batch_id in jobs.plan(str(job.pk)):
        jobs.run_batch(batch_id)
    jobs.finish(str(job.pk))
    return World(
        tokens={"a": issue_token(a), "b": issue_token(b)},
        group_ids=list(MemberMatchGroup.objects.filter(partner=a).values_list("id", flat=True)),
        patient_ids=[patient.fhir_id],
        resource_ids={"Observation": [o.fhir_id for o in observations], "Encounter": [e.fhir_id for e in encounters],
                      "Patient": [patient.fhir_id]},
        job_ids=[str(job.pk)],
        file_ids=[str(f) for f in OutputFile.objects.filter(job_id=job.pk).values_list("id", flat=True)])


def partner_of(world: World, name: str) -> Partner:
    return Partner.objects.get(name=f"Hostile {name.upper()}")


# --- the requests ------------------------------------------------------------------------------------------------

def _enc(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def odd_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_IDS), st.text(max_size=40), st.text(alphabet="\x00\x01\x7f\ud7ff\ue000\uffff"
                                                                            "%/?#&=;,.$", max_size=20))


def id_values(world: World, converter_name: str) -> st.SearchStrategy[str]:
    """Percent-encoded values for one path parameter: A's real ids, random ids, odd ones."""
    converter, _, name = converter_name.partition(":")
    if converter == "uuid":
        real = world.job_ids + world.file_ids
        return st.one_of(st.sampled_from(real), st.uuids().map(str))
    every_resource = [fhir_id for ids in world.resource_ids.values() for fhir_id in ids]
    real = {"group_id": world.group_ids, "patient_id": world.patient_ids,
            "fhir_id": every_resource}.get(name or converter)
    choices = [st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True), odd_text().map(_enc)]
    if real:
        choices.insert(0, st.sampled_from(real))
    return st.one_of(*choices)


@st.composite
def paths(draw, world: World, routes: list[Endpoint]) -> str:
    endpoint = draw(st.sampled_from(routes))
    built = ["/"]
    for kind, value in endpoint.parts:
        if kind == "text":
            built.append(value)
        elif kind == "choice":
            built.append(draw(st.sampled_from(value.split("|"))))
        else:
            built.append(draw(id_values(world, value)))
    return "".join(built)


def date_values() -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(DATE_PREFIXES), st.one_of(st.sampled_from(ODD_DATES), st.dates().map(str),
                                                                 st.datetimes().map(lambda d: d.isoformat() + "Z"))
                     ).map("".join)


def query_values(world: World) -> st.SearchStrategy[str]:
    return st.one_of(date_values(), odd_text(), st.integers().map(str), st.sampled_from(world.patient_ids),
                     st.sampled_from(FHIR_TYPES), st.just("Patient/" + world.patient_ids[0]),
                     st.sampled_from(["Observation?date=gt9999-12-31", "Encounter?status=%00", "Patient?x=y,Z?",
                                      "Observation%3Fcode%3D%00", "Observation?date=lt0000-01-01T00:00:00Z"]))


def queries(world: World) -> st.SearchStrategy[str]:
    pair = st.tuples(st.one_of(st.sampled_from(SEARCH_NAMES), odd_text()), query_values(world))
    return st.lists(pair, max_size=6).map(
        lambda pairs: urlencode([(n.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                                 for n, v in pairs]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=15)


def parameters_bodies(world: World) -> st.SearchStrategy[dict]:
    parameter = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(PARAMETER_NAMES), st.text(max_size=10))},
                                      optional={"valueString": st.one_of(query_values(world), json_values),
                                                "valueInteger": json_values, "valueDate": date_values(),
                                                "valueInstant": date_values(), "valueCode": json_values,
                                                "resource": json_values, "part": json_values})
    return st.fixed_dictionaries({"resourceType": st.sampled_from(["Parameters", "Parameters", "Bundle", "", None])},
                                 optional={"parameter": st.one_of(st.lists(parameter, max_size=4), json_values)})


@st.composite
def bodies(draw, world: World, limit: int) -> bytes:
    kind = draw(st.sampled_from(["none", "json", "parameters", "deep", "malformed", "bytes", "huge", "form",
                                 "strings", "bulk"]))
    if kind == "none":
        return b""
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "parameters":
        return json.dumps(draw(parameters_bodies(world))).encode()
    if kind == "bulk":  # a well-formed bulk request with one member's parts replaced by something odd
        body = bulk_match_request()
        body["parameter"][0]["part"][draw(st.integers(0, 2))] = draw(st.one_of(json_values, parameters_bodies(world)))
        return json.dumps(body).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 100, 1000, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"resourceType":"Parameters","p":[',
                                                                            "]}")]))
        return (opener * depth + "1" + closer * depth).encode()
    if kind == "malformed":
        text = json.dumps(draw(parameters_bodies(world)))
        cut = draw(st.integers(0, max(len(text) - 1, 0)))
        return draw(st.sampled_from([text[:cut], text + "}", text.replace('"', "'"), "NaN", "[Infinity]",
                                     '{"a": 1e99999}', "1" * 5000, '{"a":"\\u0000"}', '{"\\ud800":1}',
                                     '["\\udfff"]', "\ufeff{}", '{"a":1,"a":2}'])).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=300)) + draw(st.sampled_from([b"", b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80"]))
    if kind == "huge":
        return b'{"resourceType":"Parameters","x":"' + b"a" * (limit + draw(st.integers(1, 1000))) + b'"}'
    if kind == "form":
        pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(SEARCH_NAMES), odd_text()), query_values(world)),
                              max_size=6))
        pairs += draw(st.sampled_from([[], [("client_assertion", "a"), ("client_assertion", "b")],
                                       [("grant_type", "client_credentials")] * 2]))
        return urlencode([(n.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                          for n, v in pairs]).encode()
    return json.dumps({"resourceType": "Consent", "id": draw(odd_text()), "status": draw(odd_text())},
                      ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def hostile_requests(draw, world: World, routes: list[Endpoint], *, body_limit: int) -> Attack:
    path = draw(paths(world, routes))
    query = draw(queries(world))
    method = draw(st.sampled_from(["GET", "GET", "POST", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]))
    token = draw(st.sampled_from(["a", "b", "none", "garbage"]))
    headers = {}
    if token in world.tokens:
        headers["Authorization"] = f"Bearer {world.tokens[token]}"
    elif token == "garbage":
        headers["Authorization"] = draw(st.sampled_from(["Bearer ", "Bearer x", "Basic YTpi", "Bearer " + "x" * 5000,
                                                         f"Bearer {uuid.uuid4().hex}"]))
    if draw(st.booleans()):
        headers["Prefer"] = draw(st.sampled_from(PREFERS))
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(ACCEPTS))
    body = draw(bodies(world, body_limit)) if method in ("POST", "PUT", "PATCH") or draw(st.booleans()) else b""
    return Attack(method=method, path=path + (f"?{query}" if query else ""), headers=headers, body=body,
                  content_type=draw(st.sampled_from(CONTENT_TYPES)))


# --- the answers ---------------------------------------------------------------------------------------------------

def is_api(path: str) -> bool:
    return path.startswith(("/fhir/", "/oauth/"))


def is_html(content_type: str, body: bytes) -> bool:
    return "html" in content_type.lower() or body.lstrip()[:1] == b"<"


def problems(attack: Attack, status: int, content_type: str, body: bytes) -> list[str]:
    """What is wrong with this answer: a 5xx; under /fhir/ and /oauth/ an HTML body or an error that is not JSON."""
    found = []
    if status >= 500:
        found.append(f"{status}")
    if is_api(attack.route):
        if is_html(content_type, body):
            found.append("html")
        elif status >= 400 and body and attack.method != "HEAD":
            try:
                json.loads(body)
            except ValueError:
                found.append("error body not JSON")
    return found


def send_with_test_client(client: Client, attack: Attack) -> tuple[int, str, bytes]:
    headers = dict(attack.headers)
    response = client.generic(attack.method, attack.path, data=attack.body, content_type=attack.content_type,
                              headers=headers)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, response.get("Content-Type", ""), body
