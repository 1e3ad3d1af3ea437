#!/usr/bin/env python3
"""Make sample/: a few members of ../shared/data with every resource type, plus the shared resources they use.

A user's clone has no ../shared, so `make demo` loads this sample. Members are chosen deterministically:
for each resource type the smallest member who has it, then the smallest members with sensitive codes and
one young member (born inside the look-back), so every export rule has something to act on.

    python scripts/make_sample.py [--source ../shared/data] [--out sample]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdex.extract import SHARED_TYPES, member_reference, shared_refs  # noqa: E402

SENSITIVE_MARKERS = {"55680006", "55277-8", "714812005", "5602001", "7200002"}
MAX_MEMBERS = 8


def read_all(source: Path) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    for path in sorted(source.glob("*.ndjson.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            by_type[path.name.split(".")[0]] = [json.loads(line) for line in stream if line.strip()]
    return by_type


def choose_members(by_type: dict[str, list[dict]]) -> list[str]:
    owned: dict[str, list[dict]] = defaultdict(list)
    for kind, resources in by_type.items():
        if kind in SHARED_TYPES:
            continue
        for resource in resources:
            owned[member_reference(resource)].append(resource)
    size = {patient: len(resources) for patient, resources in owned.items()}
    types_of = {patient: {r["resourceType"] for r in resources} for patient, resources in owned.items()}
    by_size = sorted(owned, key=lambda p: (size[p], p))
    chosen: list[str] = []
    for kind in sorted(k for k in by_type if k not in SHARED_TYPES):
        if not any(kind in types_of[p] for p in chosen):
            chosen.append(next(p for p in by_size if kind in types_of[p]))
    for marker in sorted(SENSITIVE_MARKERS):
        holder = next((p for p in by_size if marker in json.dumps(owned[p])), None)
        if holder and holder not in chosen and len(chosen) < MAX_MEMBERS:
            chosen.append(holder)
    patients = {p["id"]: p for p in by_type["Patient"]}
    youngest = max(patients.values(), key=lambda p: (p.get("birthDate", ""), p["id"]))["id"]
    if youngest not in chosen:
        chosen.append(youngest)
    return sorted(chosen)


def write_sample(by_type: dict[str, list[dict]], members: list[str], out: Path) -> dict[str, int]:
    wanted = set(members)
    picked: dict[str, list[dict]] = defaultdict(list)
    shared_needed: set[str] = set()
    for kind, resources in by_type.items():
        if kind in SHARED_TYPES:
            continue
        for resource in resources:
            if member_reference(resource) in wanted:
                picked[kind].append(resource)
                shared_needed.update(shared_refs(resource))
    for kind in SHARED_TYPES & set(by_type):
        picked[kind] = [r for r in by_type[kind] if f"{kind}/{r['id']}" in shared_needed]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.ndjson.gz"):
        stale.unlink()
    counts = {}
    for kind in sorted(picked):
        lines = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in picked[kind])
        # mtime=0: the same input makes byte-identical files.
        with open(out / f"{kind}.ndjson.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(lines.encode())
        counts[kind] = len(picked[kind])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "sample")
    args = parser.parse_args()
    by_type = read_all(args.source)
    members = choose_members(by_type)
    counts = write_sample(by_type, members, args.out)
    size = sum(p.stat().st_size for p in args.out.glob("*.ndjson.gz"))
    print(f"{len(members)} members, {sum(counts.values())} resources, {size / 1024:.0f} KiB compressed")
    for kind, count in counts.items():
        print(f"  {kind:<22}{count:>6}")


if __name__ == "__main__":
    main()
