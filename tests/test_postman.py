"""The Postman collection is written from docs/examples/ by scripts/postman.py, and committed as written."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import ROOT


def postman():
    spec = importlib.util.spec_from_file_location("postman", ROOT / "scripts" / "postman.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_collection_is_what_the_script_writes():
    module = postman()
    assert module.OUT.read_text() == module.render(), "run scripts/postman.py and commit its output"


def test_the_collection_carries_the_example_bodies_verbatim():
    items = json.loads(postman().render())["item"]
    bodies = {item["name"]: item["request"]["body"]["raw"] for item in items if "body" in item["request"]}
    for name, example in (("$member-match", "member-match.json"), ("$bulk-member-match", "bulk-member-match.json"),
                          ("$davinci-data-export", "davinci-data-export.json")):
        assert bodies[name] == (ROOT / "docs" / "examples" / example).read_text()
        json.loads(bodies[name])
