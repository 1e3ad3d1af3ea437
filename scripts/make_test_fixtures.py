#!/usr/bin/env python3
"""Make the test fixtures that come from the project's shared notes: the spec's example instances and the
Synthea resources tests/test_extract.py pins its rules on.

A user's clone has no ../shared, and `make test` must pass there: the tests read these copies, kept in the
repository (tests/fixtures/README.md says where each comes from). Re-run after the shared notes change;
the output is the same bytes for the same input.

    python scripts/make_test_fixtures.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
ABRAM = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"
# One real resource of every type of the Synthea set, plus the sensitive and resolved ones the rules name.
PINNED = [
    ("AllergyIntolerance", "35b9a8ec-7d37-4ffe-b406-980a804da0b5"),
    ("CarePlan", "ac8ce97f-0445-4a75-935b-15bca1d22472"),
    ("CareTeam", "e0134665-1b30-4ba3-92a5-ca5b91cce68d"),
    ("Claim", "001ae14e-3afb-4b8f-b23e-3ad65fec5e4e"),
    ("Condition", "77ac8342-6950-4302-a303-efba12e06785"),
    ("Condition", "a5a38601-b6fe-46b4-a67e-cde9d5957dde"),
    ("Condition", "bdbb6075-f170-4d6d-b040-5f1ffc4d87ef"),
    ("Device", "758ebcae-33c1-4e44-8cb9-383520dbcb90"),
    ("DiagnosticReport", "943d816d-bad4-4125-835a-f5fafcad22df"),
    ("Encounter", "17b801ac-58e3-4f6b-8b48-8e33f3a36086"),
    ("ExplanationOfBenefit", "af093440-e2a5-4a1e-93a5-70b212699b02"),
    ("ImagingStudy", "fd93b6e0-0240-4a5a-ab4e-1395c223a2bb"),
    ("Immunization", "c3f2624a-413e-4707-b58f-7946fe396bdf"),
    ("MedicationRequest", "1e90905f-ebba-4953-b0b9-53d439bb9d76"),
    ("Observation", "3b5f0530-bdef-439f-bfdb-6f606bc83ad3"),
    ("Observation", "cdec68f5-5a6a-4861-b26b-f4061ff4f2f9"),
    ("Organization", "5d4b9df1-93ae-3bc9-b680-03249990e558"),
    ("Patient", ABRAM),
    ("Practitioner", "87a5ab63-4cbe-3f5c-9287-5388c7187ef1"),
    ("Procedure", "4e123f35-aea3-41bc-9749-45d955e2563d"),
    ("Procedure", "da8efb7f-9080-4d7b-bd00-8aeee447def1"),
]


def copy_examples(source: Path, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.json*"):
        stale.unlink()
    copied = 0
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            copied += 1
    return copied


def write_pinned(data: Path, target: Path) -> int:
    """The pinned resources, one line each as the data holds it (byte for byte), in PINNED order."""
    wanted = set(PINNED)
    found: dict[tuple[str, str], str] = {}
    for kind in sorted({kind for kind, _ in PINNED}):
        with gzip.open(data / f"{kind}.ndjson.gz", "rt", encoding="utf-8") as stream:
            for line in stream:
                key = (kind, json.loads(line)["id"])
                if key in wanted:
                    found[key] = line.rstrip("\n")
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"not in {data}: {sorted(missing)}")
    # tests/test_ingest.py relies on it: the sample has every type of the full set because the pins do.
    unpinned = {path.name.split(".")[0] for path in data.glob("*.ndjson.gz")} - {kind for kind, _ in PINNED}
    if unpinned:
        raise SystemExit(f"types of {data} with no pinned resource: {sorted(unpinned)}")
    target.write_text("".join(found[key] + "\n" for key in PINNED), encoding="utf-8")
    return len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    examples = copy_examples(args.shared / "spec" / "examples", FIXTURES / "examples")
    pinned = write_pinned(args.shared / "data", FIXTURES / "synthea-pinned.ndjson")
    print(f"{examples} spec examples, {pinned} pinned Synthea resources under {FIXTURES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
