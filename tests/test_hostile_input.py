"""Hostile partners and bad input (tests/hostile.py): generated requests over every endpoint never get a 5xx,
an HTML page or a non-JSON error under /fhir/ and /oauth/; another partner's objects answer the very bytes an
unknown id does; and each cause found by hand stays fixed.

This is the bounded form (`HOSTILE_EXAMPLES`, default 300 generated requests); `make test-hostile` runs
thousands against a live gunicorn (scripts/hostile.py).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pdex.jsonbody import MAX_DEPTH, parse_json
from tests.conftest import issue_token
from tests.hostile import (
    Attack,
    build_world,
    endpoints,
    hostile_requests,
    problems,
    send_with_test_client,
)

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "300"))
BODY_LIMIT = 64 * 1024


@pytest.fixture
def world(db, make_partner, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = BODY_LIMIT
    settings.PAYER_NPI = "9876543210"
    settings.MEMBER_ID_SYSTEM = "http://example.org/old-payer"
    return build_world(make_partner, issue_token)


ROUTES = None


def routes():
    global ROUTES  # the URL conf, read once per run
    if ROUTES is None:
        ROUTES = endpoints()
    return ROUTES


def test_the_url_conf_is_enumerated():
    names = {endpoint.name for endpoint in routes()}
    assert {"oauth-token", "oauth-register", "member-match", "bulk-member-match", "group-read", "bulk-status",
            "bulk-file", "patient-everything", "resource-read", "resource-search", "davinci-data-export",
            "system-export", "collected-consent-read", "healthz"} <= names
    assert not any(name.startswith("admin") for name in names)


@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_generated_requests_get_no_5xx_and_no_html(world, data):
    attack = data.draw(hostile_requests(world, routes(), body_limit=BODY_LIMIT))
    status, content_type, body = send_with_test_client(Client(raise_request_exception=False), attack)
    assert not problems(attack, status, content_type, body), (attack, status, body[:500])


# --- each cause found by hand, as curl would send it ---------------------------------------------------------------

def send(method: str, path: str, *, token: str | None = None, body: bytes = b"",
         content_type: str = "application/fhir+json", prefer: str = "") -> tuple[int, str, bytes]:
    headers = {"Prefer": prefer} if prefer else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    attack = Attack(method, path, headers, body, content_type)
    answer = send_with_test_client(Client(raise_request_exception=False), attack)
    assert not problems(attack, *answer), (attack, answer)
    return answer


def outcome_code(body: bytes) -> str:
    return json.loads(body)["issue"][0]["code"]


def deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("path", ["/oauth/register", "/fhir/Patient/$member-match", "/fhir/Group/$bulk-member-match",
                                  "/fhir/Group/{group}/$davinci-data-export", "/fhir/Patient/{patient}/$everything"])
def test_deep_json_is_400_not_500(world, path):
    path = path.format(group=world.group_ids[0], patient=world.patient_ids[0])
    status, _, body = send("POST", path, token=world.tokens["a"], body=b'{"a":' * 1000 + b"1" + b"}" * 1000,
                           prefer="respond-async", content_type="application/json")
    assert status == 400, body
    if path.startswith("/oauth/"):
        assert json.loads(body)["error"] == "invalid_client_metadata"


def test_depth_limit_is_exactly_max_depth(world):
    ok = {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}
    for depth, refused in ((MAX_DEPTH, False), (MAX_DEPTH + 1, True)):
        nested = json.dumps(ok)[:-1] + ', "z": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
        status, _, body = send("POST", "/fhir/Patient/$member-match", token=world.tokens["a"], body=nested.encode())
        assert (status == 400 and b"nested more than" in body) is refused, (depth, status, body)


@pytest.mark.parametrize(("text", "depth"), [
    (b'{"a": "[[[[{{{{"}', 1),  # brackets in a string are text
    (b'[[["]]]]]]", [[["\\\\"]]]]]', 6),  # closing brackets in a string do not lower it; an escaped backslash
    (b'{"a": "\\"[[[["}', 1),  # ends its string, an escaped quote does not
    (b'[[], [[[]]], {}]', 4),
    (b'"plain"', 0),
])
def test_nesting_depth_counts_brackets_outside_strings(text, depth):
    from pdex.jsonbody import nesting_depth

    assert nesting_depth(text) == depth


def _depth_of(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth_of, value), default=0)
    return 0


# Strings full of what fools a bracket counter: brackets, quotes, backslashes and their escapes.
_TRICKY_TEXT = st.text(alphabet='[]{}"\\/ab\u00e9\n', max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans())
def test_nesting_depth_is_the_depth_of_what_the_text_parses_to(value, ensure_ascii):
    from pdex.jsonbody import nesting_depth

    assert nesting_depth(json.dumps(value, ensure_ascii=ensure_ascii).encode()) == _depth_of(value)


def test_parsing_pauses_the_cycle_collector_and_restores_it():
    import gc

    from pdex.jsonbody import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested (another thread's parse): the outer one turns it back on
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]} and gc.isenabled()


def test_empty_form_post_to_group_search(world):
    status, _, body = send("POST", "/fhir/Group/_search", token=world.tokens["a"], body=b"", content_type="")
    assert status == 200 and json.loads(body)["resourceType"] == "Bundle"


@pytest.mark.parametrize("path", ["/fhir/Group/%00", "/fhir/Patient/%00/$everything", "/fhir/Group/%00/$export",
                                  "/fhir/Consent/%00", "/fhir/Observation?patient=%00", "/fhir/Group?_id=%00",
                                  "/fhir/Group?name=%00", "/fhir/Consent/99999999999999999999999"])
def test_nul_and_out_of_grammar_ids(world, path):
    status, _, body = send("GET", path, token=world.tokens["a"])
    assert status in (400, 403, 404), body


@pytest.mark.parametrize("query", ["start=9999-12-31", "end=9999", "start=9999-12-31T23:59:59-05:00",
                                   "end=0001-01-01T00:00:00%2B14:00", "_since=9999-12-31T23:59:59-05:00"])
def test_dates_python_cannot_hold_are_400_on_everything(world, query):
    status, _, body = send("GET", f"/fhir/Patient/{world.patient_ids[0]}/$everything?{query}",
                           token=world.tokens["a"])
    assert status == 400 and outcome_code(body) in ("value", "invalid"), body


@pytest.mark.parametrize("query", ["date=gt9999-12-31T23:59:59-05:00", "date=9999-12-31", "date=lt0000-01-01",
                                   "_lastUpdated=gt9999-12-31T23:59:59%2B14:00"])
def test_dates_python_cannot_hold_are_400_on_search(world, query):
    status, _, body = send("GET", f"/fhir/Observation?patient={world.patient_ids[0]}&{query}",
                           token=world.tokens["a"])
    assert status == 400, body
    status, _, body = send("GET", "/fhir/Group?_lastUpdated=9999-12-31", token=world.tokens["a"])
    assert status == 400, body


def test_type_filter_dates_out_of_range_are_400(world):
    status, _, body = send("GET", f"/fhir/Group/{world.group_ids[0]}/$davinci-data-export?"
                                  "_typeFilter=Observation%3Fdate%3Dgt9999-12-31T23:59:59-05:00",
                           token=world.tokens["a"], prefer="respond-async")
    assert status in (400, 404), body


@pytest.mark.parametrize("path", ["/fhir/Patient/$member-match", "/fhir/Group/$bulk-member-match", "/oauth/register",
                                  "/oauth/token"])
def test_a_body_over_the_limit_is_413(world, path):
    content_type = "application/x-www-form-urlencoded" if path == "/oauth/token" else "application/fhir+json"
    status, _, body = send("POST", path, token=world.tokens["a"], body=b"a=" + b"x" * (BODY_LIMIT + 10),
                           content_type=content_type, prefer="respond-async")
    assert status == 413, body


@pytest.mark.parametrize("text", [b'{"resourceType":"Parameters","x":"\\u0000"}', b'{"resourceType":"\\ud800"}',
                                  b'{"\\udfff":1}', b"\xff\xfe{}", b'{"a": 1e999}', b"[NaN]"])
def test_strings_postgresql_cannot_store_are_400(world, text):
    status, _, body = send("POST", "/fhir/Patient/$member-match", token=world.tokens["a"], body=text)
    assert status == 400 and outcome_code(body) == "structure", body


def test_paired_surrogates_and_escaped_backslashes_are_fine():
    assert parse_json(b'["\\ud83d\\ude00", "\\\\u0000"]') == ["\U0001f600", "\\u0000"]


def test_csrf_refusal_of_an_api_path_is_json(db):
    response = Client(enforce_csrf_checks=True).post("/healthz", data={"a": "b"})
    assert response.status_code == 403 and response.json()["status"] == "error"
    response = Client(enforce_csrf_checks=True).post("/admin/login/", data={"a": "b"})
    assert response.status_code == 403 and b"<html" in response.content.lower()  # the admin keeps Django's page


@pytest.mark.parametrize("path", ["/oauth/token", "/fhir/metadata", "/healthz"])
def test_a_host_not_allowed_is_answered_in_json(db, path):
    response = Client(raise_request_exception=False).post(path, data="x=1", HTTP_HOST="evil.example",
                                                          content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    body = response.json()
    if path.startswith("/oauth/"):
        assert body["error"] == "invalid_request"
    elif path.startswith("/fhir/"):
        assert body["resourceType"] == "OperationOutcome"


# --- the cross-partner matrix -------------------------------------------------------------------------------------

def object_routes(world) -> list[tuple[str, str, str]]:
    """(route name, a path with one of A's real ids, the same path with a random id) for every object endpoint."""
    random_id = f"x{uuid.uuid4().hex[:20]}"
    found = []
    for endpoint in routes():
        params = [value for kind, value in endpoint.parts if kind == "param"]
        if not params or not any(kind == "text" and value.startswith("fhir/") for kind, value in endpoint.parts):
            continue
        param = params[0]
        if param.startswith("uuid:"):
            real = world.job_ids if "job" in param else world.file_ids
            pairs = [(r, str(uuid.uuid4())) for r in real]
        elif param.endswith("group_id"):
            pairs = [(g, random_id) for g in world.group_ids]
        elif param.endswith("patient_id"):
            pairs = [(p, random_id) for p in world.patient_ids]
        elif param.endswith("consent_id"):
            continue  # our enrollment systems' consents: no partner's token reaches them (403 for any id)
        else:
            pairs = [(r, random_id) for ids in world.resource_ids.values() for r in ids]
        for real, fake in pairs:
            def build(value: str, endpoint=endpoint, real=real) -> str:
                out = "/"
                for kind, text in endpoint.parts:
                    if kind == "text":
                        out += text
                    elif kind == "choice":
                        out += next(t for t, ids in world.resource_ids.items() if real in ids)
                    else:
                        out += value
                return out
            found.append((endpoint.name, build(real), build(fake)))
    # Searches on A's member: the patient parameter names an object too.
    for resource_type in ("Observation", "Encounter", "Coverage"):
        found.append(("resource-search", f"/fhir/{resource_type}?patient={world.patient_ids[0]}",
                      f"/fhir/{resource_type}?patient={random_id}"))
    return found


def test_another_partners_ids_answer_the_bytes_of_a_random_id(world):
    """Partner B, with every scope, tries each of partner A's real ids on every object endpoint and method; the
    answer is byte for byte the answer to an id that does not exist, and GET is always 404."""
    matrix = object_routes(world)
    kinds = {name for name, _, _ in matrix}
    assert {"group-read", "davinci-data-export", "group-export", "patient-everything", "resource-read",
            "bulk-status", "bulk-file", "bulk-file-signed", "resource-search"} <= kinds
    tried = 0
    for name, real, fake in matrix:
        for method in ("GET", "POST", "DELETE", "PUT"):
            body = b'{"resourceType":"Parameters","parameter":[]}' if method in ("POST", "PUT") else b""
            answers = [send(method, path, token=world.tokens["b"], body=body, prefer="respond-async")
                       for path in (real, fake)]
            (status_real, _, body_real), (status_fake, _, body_fake) = answers
            assert (status_real, body_real) == (status_fake, body_fake), (name, method, real, answers)
            if method == "GET":
                assert status_real == 404, (name, real, body_real)
            tried += 1
    assert tried >= 60
    # A itself reads its own Group: the ids are real.
    assert send("GET", f"/fhir/Group/{world.group_ids[0]}", token=world.tokens["a"])[0] == 200
