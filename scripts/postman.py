#!/usr/bin/env python3
"""Write docs/examples/pdex-p2p.postman_collection.json from the bodies in docs/examples/ (`make postman`).

The same requests as docs/quickstart.md, in its order, for Postman (collection format v2.1): set the
collection variables `base` and `token` (`manage.py p2p_token` prints one); the kick-offs' status URLs and
the matched Group's id are picked up by the requests' test scripts into `matchStatus`, `exportStatus`,
`group` and `patient`. Run it again whenever an example body changes; tests/test_postman.py checks the
committed file is what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
OUT = EXAMPLES / "pdex-p2p.postman_collection.json"
FHIR_JSON = "application/fhir+json"


def body(name: str) -> dict:
    return {"mode": "raw", "raw": (EXAMPLES / name).read_text(), "options": {"raw": {"language": "json"}}}


def request(name: str, method: str, path: str, *, headers: dict[str, str] | None = None, example: str | None = None,
            auth: bool = True, script: list[str] | None = None, description: str = "") -> dict:
    item = {"name": name, "request": {
        "method": method, "description": description,
        "header": [{"key": key, "value": value} for key, value in (headers or {}).items()],
        "url": {"raw": "{{base}}" + path, "host": ["{{base}}"], "path": [p for p in path.split("/") if p]},
    }}
    if example:
        item["request"]["body"] = body(example)
    if not auth:
        item["request"]["auth"] = {"type": "noauth"}
    if script:
        item["event"] = [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}]
    return item


def keep_status(variable: str) -> list[str]:
    return [f'pm.collectionVariables.set("{variable}", pm.response.headers.get("Content-Location"));',
            'pm.test("202 Accepted", () => pm.response.to.have.status(202));']


def collection() -> dict:
    async_json = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Prefer": "respond-async"}
    items = [
        request("SMART discovery", "GET", "/fhir/.well-known/smart-configuration", auth=False),
        request("Register (RFC 7591): put your public JWKS in `jwks`", "POST", "/oauth/register",
                headers={"Content-Type": "application/json"}, example="register.json", auth=False,
                description="Pending until the plan approves it. Then get tokens with `manage.py p2p_token`."),
        request("$member-match", "POST", "/fhir/Patient/$member-match",
                headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}, example="member-match.json"),
        request("$bulk-member-match", "POST", "/fhir/Group/$bulk-member-match", headers=async_json,
                example="bulk-member-match.json", script=keep_status("matchStatus")),
        request("Poll the match", "GET", "/{{matchStatus}}", headers={"Accept": "application/json"}),
        request("Search your matched Group", "GET", "/fhir/Group?code=match", headers={"Accept": FHIR_JSON}, script=[
            "const group = pm.response.json().entry[0].resource;",
            'pm.collectionVariables.set("group", group.id);',
            'pm.collectionVariables.set("patient", group.member[0].entity.reference);']),
        request("Read the Group", "GET", "/fhir/Group/{{group}}", headers={"Accept": FHIR_JSON}),
        request("$davinci-data-export", "POST", "/fhir/Group/{{group}}/$davinci-data-export", headers=async_json,
                example="davinci-data-export.json", script=keep_status("exportStatus")),
        request("Poll the export", "GET", "/{{exportStatus}}", headers={"Accept": "application/json"}),
        request("$everything (one member, paged)", "GET", "/fhir/{{patient}}/$everything?_count=50",
                headers={"Accept": FHIR_JSON}),
        request("Done with the export (deletes its files)", "DELETE", "/{{exportStatus}}"),
    ]
    for item in items:  # a status URL is absolute: the variable holds it whole
        raw = item["request"]["url"]["raw"]
        if "{{matchStatus}}" in raw or "{{exportStatus}}" in raw:
            variable = raw.split("/", 1)[1]
            item["request"]["url"] = {"raw": variable}
    return {
        "info": {"name": "pdex-p2p: payer-to-payer exchange (docs/quickstart.md)",
                 "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
                 "description": "Written by scripts/postman.py from docs/examples/. Set `base` and `token`."},
        "auth": {"type": "bearer", "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}]},
        "variable": [{"key": "base", "value": "http://localhost:8000"}, {"key": "token", "value": ""},
                     {"key": "matchStatus", "value": ""}, {"key": "exportStatus", "value": ""},
                     {"key": "group", "value": ""}, {"key": "patient", "value": ""}],
        "item": items,
    }


def render() -> str:
    return json.dumps(collection(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"{OUT.relative_to(ROOT)}: {len(collection()['item'])} requests")
