"""Load FHIR NDJSON into the member data store: streamed, validated, COPY-loaded and idempotent.

Lines are parsed, validated with the fhir.resources R4B models and extracted (pdex.extract) in a pool of
worker processes, because validation costs ~3,500 resources/s per core; the parent only COPYs rows into a
temporary table and merges them with one INSERT … ON CONFLICT per batch. See docs/data-store.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import connection, transaction
from tqdm import tqdm

from pdex.extract import SHARED_TYPES, absolute_binary_urls, extract, format_instant, normalize_name
from pdex.identity import refresh_member_identity

BATCH_LINES = 2000
POOL_CHUNK = 250


@dataclass(frozen=True)
class BadLine:
    """A line we skipped, and why (never the line itself: it may hold PHI)."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadReport:
    """What one load did, per resource type."""

    read: Counter = field(default_factory=Counter)
    inserted: Counter = field(default_factory=Counter)
    updated: Counter = field(default_factory=Counter)
    bad: list[BadLine] = field(default_factory=list)
    identities_changed: int = 0

    @property
    def unchanged(self) -> Counter:
        return self.read - self.inserted - self.updated

    def table(self, totals: dict[str, int] | None = None) -> str:
        """A per-type count table for the terminal."""
        types = sorted(set(self.read) | set(totals or {}))
        header = f"{'resource type':<24}{'read':>9}{'inserted':>10}{'updated':>9}{'unchanged':>10}{'in store':>10}"
        lines = [header, "-" * len(header)]
        unchanged = self.unchanged
        for kind in types:
            lines.append(f"{kind:<24}{self.read[kind]:>9}{self.inserted[kind]:>10}{self.updated[kind]:>9}"
                         f"{unchanged[kind]:>10}{(totals or {}).get(kind, 0):>10}")
        lines.append("-" * len(header))
        lines.append(f"{'total':<24}{sum(self.read.values()):>9}{sum(self.inserted.values()):>10}"
                     f"{sum(self.updated.values()):>9}{sum(unchanged.values()):>10}"
                     f"{sum((totals or {}).values()):>10}")
        if self.read["Coverage"] or self.identities_changed:
            lines.append(f"member identity (member number, subscriber id) from Coverage changed for "
                         f"{self.identities_changed} member(s)")
        if self.bad:
            lines.append(f"{len(self.bad)} bad line(s) skipped")
        return "\n".join(lines)


# --- reading ---------------------------------------------------------------------------------------

def ndjson_files(paths: Iterable[str | Path]) -> list[Path]:
    """The .ndjson / .ndjson.gz files named or found (recursively) in folders, Patient files first."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and _is_ndjson(p))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(str(path))
    # Patients first so their members exist when the rest joins to them (the rest resolves later anyway).
    return sorted(dict.fromkeys(found), key=lambda p: (not p.name.startswith("Patient"), str(p)))


def _is_ndjson(path: Path) -> bool:
    return path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz"))


def read_lines(path: Path) -> Iterator[tuple[str, int, str]]:
    """(path, line number, text) for every non-blank line, streamed (gzip by suffix)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for number, text in enumerate(stream, start=1):
            if text.strip():
                yield str(path), number, text


# --- parsing (runs in worker processes; no database here) -----------------------------------------

@dataclass(frozen=True)
class ParseConfig:
    validate: bool
    security_codes: frozenset[str]
    codes_file: str
    # Our FHIR base: a DocumentReference's relative `Binary/{id}` attachment URL is made absolute with it.
    base_url: str = ""
    # What the data was made from, when the loader knows (PDex ProvenancePayerDataSource code).
    source_format: str = ""


def parse_config(*, validate: bool = True, source_format: str = "") -> ParseConfig:
    """The parse settings of one load, from the settings (sensitive codes, our base URL)."""
    return ParseConfig(validate=validate, security_codes=frozenset(settings.SENSITIVE_SECURITY_CODES),
                       codes_file=str(settings.SENSITIVE_CODES_FILE), base_url=settings.FHIR_BASE_URL,
                       source_format=source_format)


def member_columns(patient: dict) -> dict:
    """Member row columns from a Patient: normalized names, birth date, gender, postal code, UMB."""
    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    addresses = patient.get("address") or []
    address = next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})
    return {
        "fhir_id": patient["id"],
        "umb": umb_for(patient["id"]),
        "family": normalize_name(name.get("family", ""))[:128],
        "given": normalize_name(" ".join(name.get("given") or []))[:128],
        "birth_date": patient.get("birthDate") or None,
        "gender": (patient.get("gender") or "")[:16],
        "postal_code": (address.get("postalCode") or "")[:16],
    }


def umb_for(patient_id: str) -> str:
    """Deterministic unique member business identifier for a Patient id (same function in SQL: md5)."""
    return "UMB-" + hashlib.md5(patient_id.encode()).hexdigest()[:12].upper()  # noqa: S324 - an id, not security


def parse_line(text: str, config: ParseConfig) -> tuple[tuple | None, dict | None, str | None]:
    """One NDJSON line → (resource row, member row for Patients, error)."""
    try:
        resource = json.loads(text)
    except ValueError as exc:
        return None, None, f"not JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
        return None, None, "not a FHIR resource with resourceType and id"
    kind = resource["resourceType"]
    if config.validate:
        problem = validation_problem(text, kind)
        if problem:
            return None, None, problem
    try:
        return resource_row(resource, config), (member_columns(resource) if kind == "Patient" else None), None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, None, f"cannot extract {kind}: {exc}"


def validation_problem(text: str, kind: str) -> str | None:
    """Why one resource's JSON text is not valid FHIR R4 (the R4B models), or None when it is."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - fhir.resources takes ~0.25 s to import: only a validating load pays
    try:
        get_fhir_model_class(kind).model_validate_json(text)
    except KeyError:
        return f"unknown resource type {kind!r}"
    except Exception as exc:  # noqa: BLE001 - pydantic/fhir errors of every kind mean "invalid"
        return f"invalid {kind}: {_validation_summary(exc)}"
    return None


def resource_row(resource: dict, config: ParseConfig) -> tuple:
    """The staging row of one resource; meta.lastUpdated is filled in when absent (we own it, as a server)."""
    if config.base_url:
        absolute_binary_urls(resource, config.base_url)
    columns = extract(resource, security_codes=config.security_codes, codes_file=config.codes_file)
    if not columns.last_updated_from_meta:
        resource.setdefault("meta", {})["lastUpdated"] = format_instant(columns.last_updated)
    return (
        columns.resource_type, columns.fhir_id, columns.patient_id,
        json.dumps(resource, separators=(",", ":"), ensure_ascii=False),
        columns.last_updated, columns.service_start, columns.service_end, columns.sensitive,
        columns.clinical_status, columns.eob_use, columns.pa_status, columns.pa_status_changed,
        columns.pa_period_end, columns.pa_drug, columns.refs, config.source_format,
    )


def _validation_summary(exc: Exception) -> str:
    """Where and what, never the offending value: a report of bad lines must not carry PHI."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors(include_input=False, include_url=False)
        except TypeError:
            found = errors()
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or '(resource)'}: {e.get('msg', '')}"
                         for e in found[:3])[:300]
    return type(exc).__name__


_WORKER_CONFIG: ParseConfig | None = None


def _init_worker(config: ParseConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config


def _parse_chunk(chunk: list[tuple[str, int, str]]) -> list[tuple[str, int, tuple | None, dict | None, str | None]]:
    return [(path, number, *parse_line(text, _WORKER_CONFIG)) for path, number, text in chunk]


# --- writing ---------------------------------------------------------------------------------------

STAGE_COLUMNS = ("seq", "resource_type", "fhir_id", "patient_id", "body", "last_updated", "service_start",
                 "service_end", "sensitive", "clinical_status", "eob_use", "pa_status", "pa_status_changed",
                 "pa_period_end", "pa_drug", "refs", "source_format")
MEMBER_COLUMNS = ("fhir_id", "umb", "family", "given", "birth_date", "gender", "postal_code")

_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS pdex_stage_resource (
    seq bigint, resource_type text, fhir_id text, patient_id text, body text, last_updated timestamptz,
    service_start timestamptz, service_end timestamptz, sensitive boolean, clinical_status text, eob_use text,
    pa_status text, pa_status_changed timestamptz, pa_period_end timestamptz, pa_drug boolean, refs text[],
    source_format text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS pdex_stage_member (
    fhir_id text, umb text, family text, given text, birth_date date, gender text, postal_code text
) ON COMMIT DELETE ROWS;
TRUNCATE pdex_stage_resource, pdex_stage_member;
"""

# Member number and subscriber id are not in a Patient: they come from Coverage (pdex.identity).
_MERGE_MEMBERS = """
INSERT INTO pdex_member (fhir_id, umb, family, given, birth_date, gender, postal_code, subscriber_id,
                         created_at, updated_at)
SELECT DISTINCT ON (fhir_id) fhir_id, umb, family, given, birth_date, gender, postal_code, '', now(), now()
FROM pdex_stage_member ORDER BY fhir_id
ON CONFLICT (fhir_id) DO UPDATE SET
    family = EXCLUDED.family, given = EXCLUDED.given, birth_date = EXCLUDED.birth_date,
    gender = EXCLUDED.gender, postal_code = EXCLUDED.postal_code, updated_at = now()
WHERE (pdex_member.family, pdex_member.given, pdex_member.birth_date, pdex_member.gender,
       pdex_member.postal_code)
      IS DISTINCT FROM (EXCLUDED.family, EXCLUDED.given, EXCLUDED.birth_date, EXCLUDED.gender,
                        EXCLUDED.postal_code)
"""

_MERGE_RESOURCES = """
WITH staged AS (
    SELECT DISTINCT ON (resource_type, fhir_id) * FROM pdex_stage_resource
    ORDER BY resource_type, fhir_id, seq DESC
), merged AS (
    INSERT INTO pdex_resource (resource_type, fhir_id, member_id, body, last_updated, service_start, service_end,
                               sensitive, clinical_status, eob_use, pa_status, pa_status_changed, pa_period_end,
                               pa_drug, refs, source_format, ingested_at)
    SELECT s.resource_type, s.fhir_id, m.id, s.body::jsonb, s.last_updated, s.service_start, s.service_end,
           s.sensitive, s.clinical_status, s.eob_use, s.pa_status, s.pa_status_changed, s.pa_period_end,
           s.pa_drug, s.refs, COALESCE(s.source_format, ''), now()
    FROM staged s LEFT JOIN pdex_member m ON m.fhir_id = s.patient_id
    ON CONFLICT (resource_type, fhir_id) DO UPDATE SET
        member_id = COALESCE(EXCLUDED.member_id, pdex_resource.member_id), body = EXCLUDED.body,
        last_updated = EXCLUDED.last_updated, service_start = EXCLUDED.service_start,
        service_end = EXCLUDED.service_end, sensitive = EXCLUDED.sensitive,
        clinical_status = EXCLUDED.clinical_status, eob_use = EXCLUDED.eob_use, pa_status = EXCLUDED.pa_status,
        pa_status_changed = EXCLUDED.pa_status_changed, pa_period_end = EXCLUDED.pa_period_end,
        pa_drug = EXCLUDED.pa_drug, refs = EXCLUDED.refs, source_format = EXCLUDED.source_format,
        ingested_at = now()
    WHERE (pdex_resource.body, pdex_resource.member_id, pdex_resource.last_updated, pdex_resource.service_start,
           pdex_resource.service_end, pdex_resource.sensitive, pdex_resource.clinical_status,
           pdex_resource.eob_use, pdex_resource.pa_status, pdex_resource.pa_status_changed,
           pdex_resource.pa_period_end, pdex_resource.pa_drug, pdex_resource.refs, pdex_resource.source_format)
          IS DISTINCT FROM
          (EXCLUDED.body, COALESCE(EXCLUDED.member_id, pdex_resource.member_id), EXCLUDED.last_updated,
           EXCLUDED.service_start, EXCLUDED.service_end, EXCLUDED.sensitive, EXCLUDED.clinical_status,
           EXCLUDED.eob_use, EXCLUDED.pa_status, EXCLUDED.pa_status_changed, EXCLUDED.pa_period_end,
           EXCLUDED.pa_drug, EXCLUDED.refs, EXCLUDED.source_format)
    RETURNING resource_type, (xmax = 0) AS inserted
)
SELECT resource_type, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
FROM merged GROUP BY resource_type
"""

# Resources loaded before their Patient: resolve the member from the body once the members exist.
RESOLVE_MEMBERS = """
UPDATE pdex_resource r SET member_id = m.id
FROM pdex_member m
WHERE r.member_id IS NULL AND r.resource_type <> ALL(%s)
  AND m.fhir_id = substring(
        COALESCE(r.body->'patient'->>'reference', r.body->'subject'->>'reference',
                 r.body->'beneficiary'->>'reference', r.body->'for'->>'reference',
                 CASE WHEN r.resource_type = 'Patient' THEN 'Patient/' || r.fhir_id END)
        FROM '^(?:.*/)?(?:Patient/|urn:uuid:)([^/]+)(?:/_history/.*)?$')
"""


def write_batch(rows: list[tuple], members: list[dict], report: LoadReport) -> None:
    """COPY one batch into the staging tables and merge it, in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGE)
        if members:
            with cursor.cursor.copy(f"COPY pdex_stage_member ({', '.join(MEMBER_COLUMNS)}) FROM STDIN") as copy:
                for member in members:
                    copy.write_row(tuple(member[c] for c in MEMBER_COLUMNS))
            cursor.execute(_MERGE_MEMBERS)
        with cursor.cursor.copy(f"COPY pdex_stage_resource ({', '.join(STAGE_COLUMNS)}) FROM STDIN") as copy:
            for seq, row in enumerate(rows):
                copy.write_row((seq, *row))
        cursor.execute(_MERGE_RESOURCES)
        for kind, inserted, updated in cursor.fetchall():
            report.inserted[kind] += inserted
            report.updated[kind] += updated
        # Written again: no longer deleted (forget_tombstones, for this batch).
        cursor.execute("DELETE FROM pdex_tombstone t USING pdex_stage_resource s"
                       " WHERE t.resource_type = s.resource_type AND t.fhir_id = s.fhir_id")


# A Provenance names no patient: it belongs to the member whose resources it targets. One whose targets
# belong to several members stays unattached, so it is never exported to anyone (nothing of another member).
RESOLVE_PROVENANCE = """
UPDATE pdex_resource p SET member_id = owner.member_id
FROM (
    SELECT p.id, min(t.member_id) AS member_id
    FROM pdex_resource p
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(p.body -> 'target') = 'array' THEN p.body -> 'target' ELSE '[]' END) AS ref(target)
    JOIN pdex_resource t
      ON t.resource_type = split_part(ref.target ->> 'reference', '/', 1)
     AND t.fhir_id = split_part(ref.target ->> 'reference', '/', 2)
    WHERE p.resource_type = 'Provenance' AND p.member_id IS NULL AND t.member_id IS NOT NULL
    GROUP BY p.id
    HAVING count(DISTINCT t.member_id) = 1
) owner
WHERE p.id = owner.id
"""


# Da Vinci PAS records a prior authorization as a Claim (use=preauthorization, the request) answered by
# ClaimResponses (the decision). The Claim takes the decision of the latest ClaimResponse answering it — so one
# PA rule judges both — unless the Claim itself was cancelled; a ClaimResponse to a drug PA is a drug PA.
RESOLVE_PAS_DECISIONS = """
UPDATE pdex_resource c SET pa_status = d.pa_status, pa_status_changed = d.pa_status_changed,
                           pa_period_end = d.pa_period_end
FROM (
    SELECT DISTINCT ON (split_part(cr.body -> 'request' ->> 'reference', '/', 2))
           split_part(cr.body -> 'request' ->> 'reference', '/', 2) AS claim_id, cr.member_id, cr.pa_status,
           cr.pa_status_changed, cr.pa_period_end
    FROM pdex_resource cr
    WHERE cr.resource_type = 'ClaimResponse' AND cr.eob_use = 'preauthorization'
      AND split_part(cr.body -> 'request' ->> 'reference', '/', 1) = 'Claim'
    ORDER BY split_part(cr.body -> 'request' ->> 'reference', '/', 2), cr.pa_status_changed DESC NULLS LAST,
             cr.last_updated DESC
) d
WHERE c.resource_type = 'Claim' AND c.fhir_id = d.claim_id AND c.eob_use = 'preauthorization'
  AND c.member_id IS NOT DISTINCT FROM d.member_id AND c.pa_status <> 'cancelled'
  AND (c.pa_status, c.pa_status_changed, c.pa_period_end)
      IS DISTINCT FROM (d.pa_status, d.pa_status_changed, d.pa_period_end)
"""
RESOLVE_PAS_DRUG = """
UPDATE pdex_resource cr SET pa_drug = TRUE
FROM pdex_resource c
WHERE cr.resource_type = 'ClaimResponse' AND cr.eob_use = 'preauthorization' AND NOT cr.pa_drug
  AND c.resource_type = 'Claim' AND c.pa_drug
  AND c.fhir_id = split_part(cr.body -> 'request' ->> 'reference', '/', 2)
  AND split_part(cr.body -> 'request' ->> 'reference', '/', 1) = 'Claim'
"""


def resolve_members() -> int:
    """Attach resources whose Patient arrived after them, then Provenance to its targets' member; then give PAS
    Claims their ClaimResponse's decision."""
    with connection.cursor() as cursor:
        cursor.execute(RESOLVE_MEMBERS, [sorted(SHARED_TYPES)])
        attached = cursor.rowcount
        cursor.execute(RESOLVE_PROVENANCE)
        attached += cursor.rowcount
        cursor.execute(RESOLVE_PAS_DECISIONS)
        cursor.execute(RESOLVE_PAS_DRUG)
        return attached


def store_counts() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT resource_type, count(*) FROM pdex_resource GROUP BY resource_type")
        return dict(cursor.fetchall())


# --- the load --------------------------------------------------------------------------------------

def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _batched(lines: Iterator[tuple[str, int, str]], size: int) -> Iterator[list[tuple[str, int, str]]]:
    batch: list[tuple[str, int, str]] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parsed(lines: Iterator[tuple[str, int, str]], config: ParseConfig, workers: int):
    """Parsed lines in input order, in a process pool when workers > 1."""
    if workers <= 1:
        _init_worker(config)
        for chunk in _batched(lines, POOL_CHUNK):
            yield from _parse_chunk(chunk)
        return
    # spawn, not fork: children never inherit the parent's database connection (or its transaction).
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(config,)) as pool:
        for parsed in pool.imap(_parse_chunk, _batched(lines, POOL_CHUNK), chunksize=1):
            yield from parsed


def load_lines(lines: Iterable[tuple[str, int, str]], *, validate: bool = True, workers: int = 1,
               progress: bool = False, report: LoadReport | None = None, source_format: str = "") -> LoadReport:
    """Load (path, line number, text) triples; bad lines go to report.bad, everything else is stored."""
    report = report or LoadReport()
    config = parse_config(validate=validate, source_format=source_format)
    bar = _progress_bar(progress)
    rows: list[tuple] = []
    members: list[dict] = []
    # Members whose identity may have changed: their Coverage or their Patient came in this load.
    identity_patients: set[str] = set()
    for path, number, row, member, error in _parsed(iter(lines), config, workers):
        bar.update(1)
        if error:
            report.bad.append(BadLine(path, number, error))
            continue
        report.read[row[0]] += 1
        rows.append(row)
        if member:
            members.append(member)
        if row[0] in ("Coverage", "Patient") and row[2]:
            identity_patients.add(row[2])
        if len(rows) >= BATCH_LINES:
            write_batch(rows, members, report)
            rows, members = [], []
    if rows:
        write_batch(rows, members, report)
    bar.close()
    resolve_members()
    report.identities_changed = refresh_member_identity(identity_patients)
    return report


def load_paths(paths: Iterable[str | Path], *, validate: bool = True, workers: int | None = None,
               progress: bool | None = None, source_format: str = "") -> LoadReport:
    """Load every NDJSON(.gz) file named or found under the given folders."""
    files = ndjson_files(paths)
    lines = (line for path in files for line in read_lines(path))
    return load_lines(lines, validate=validate, workers=default_workers() if workers is None else workers,
                      progress=sys.stderr.isatty() if progress is None else progress, source_format=source_format)


def load_resources(resources: Iterable[dict], *, source: str = "generated", validate: bool = True) -> LoadReport:
    """Load resource dicts (synthesized data) through the same path as files."""
    lines = ((source, number, json.dumps(resource)) for number, resource in enumerate(resources, start=1))
    return load_lines(lines, validate=validate, workers=1, progress=False)


class _NoBar:
    def update(self, _n: int) -> None:
        return None

    def close(self) -> None:
        return None


def _progress_bar(enabled: bool):
    """tqdm on a terminal only: logs and CI get the summary table, not carriage returns."""
    if not enabled:
        return _NoBar()
    return tqdm(unit=" res", unit_scale=True, file=sys.stderr, desc="loading")


def bad_lines_text(report: LoadReport, limit: int = 50) -> str:
    out = io.StringIO()
    for bad in report.bad[:limit]:
        out.write(f"{bad}\n")
    if len(report.bad) > limit:
        out.write(f"… and {len(report.bad) - limit} more\n")
    return out.getvalue()


# --- resources received from another payer ---------------------------------------------------------
# The requesting side (requesting.pull) hands over resources it downloaded, validated and gave ids of our
# own; they go into the store through the same rows and merge as files do, with three differences: the member
# is named by the caller (their Patient is attached to our member, never made a member of its own), what is
# unchanged since the last receipt is left alone, and what is stored gets meta.lastUpdated = when we received
# it — the version in our store is ours, so our own `_since` exports see it.

@dataclass(frozen=True)
class Received:
    """One resource to take in, and the Patient id of our member it belongs to: None for a shared resource, and
    for a Provenance whose targets are several members' (the rule of RESOLVE_PROVENANCE; `stored_members`
    tells the caller whose they are)."""

    resource: dict
    member_fhir_id: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.resource["resourceType"], self.resource["id"]


_UNCHANGED = """
SELECT s.n, r.ingested_at >= %b FROM unnest(%b::text[], %b::text[], %b::text[])
     WITH ORDINALITY AS s(resource_type, fhir_id, body, n)
JOIN pdex_resource r ON r.resource_type = s.resource_type AND r.fhir_id = s.fhir_id
WHERE (r.body #- '{meta,lastUpdated}') = (s.body::jsonb #- '{meta,lastUpdated}')
"""


@dataclass
class ReceivedOutcome:
    """What storing a batch of received resources did: `stored` are new or changed now; `repeated` were
    unchanged but stored since `fresh_since` (an earlier attempt of the same pull took them in); the rest
    were already held as they are."""

    stored: list[Received] = field(default_factory=list)
    repeated: list[Received] = field(default_factory=list)
    unchanged: int = 0


def store_received(received: list[Received], *, received_at, fresh_since=None,
                   compare: bool = True) -> ReceivedOutcome:
    """Store the new and changed resources (in the caller's transaction when there is one).

    Idempotent: a resource received again unchanged (meta.lastUpdated aside) is not written again, so taking
    in the same file twice stores nothing the second time. `compare=False` stores everything (resources the
    caller knows to be new, such as the receipts of resources just stored).
    """
    outcome = ReceivedOutcome()
    if not received:
        return outcome
    for item in received:
        item.resource.setdefault("meta", {})
    held: dict[int, bool] = {}
    if compare:
        types, ids, bodies = zip(*((r.key[0], r.key[1], json.dumps(r.resource)) for r in received), strict=True)
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:  # server-side binding: no client-side quoting
            cursor.execute(_UNCHANGED, [fresh_since or received_at, list(types), list(ids), list(bodies)])
            held = {position - 1: bool(fresh) for position, fresh in cursor.fetchall()}
    for position, item in enumerate(received):
        if position not in held:
            outcome.stored.append(item)
        elif held[position] and fresh_since is not None:
            outcome.repeated.append(item)
        else:
            outcome.unchanged += 1
    if not outcome.stored:
        return outcome
    config = parse_config(validate=False)
    instant = format_instant(received_at)
    rows = []
    for item in outcome.stored:
        item.resource["meta"]["lastUpdated"] = instant
        row = resource_row(item.resource, config)
        rows.append((*row[:2], item.member_fhir_id if item.member_fhir_id is not None else row[2], *row[3:]))
    write_batch(rows, [], LoadReport())
    return outcome


def stored_members(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """Which of these (type, id) the store holds, each with the Patient id of the member it belongs to."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    types, ids = zip(*keys, strict=True)
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute("SELECT r.resource_type, r.fhir_id, m.fhir_id FROM unnest(%b::text[], %b::text[])"
                       " AS k(resource_type, fhir_id) JOIN pdex_resource r USING (resource_type, fhir_id)"
                       " LEFT JOIN pdex_member m ON m.id = r.member_id", [list(types), list(ids)])
        return {(row[0], row[1]): row[2] for row in cursor.fetchall()}


# --- deletions -------------------------------------------------------------------------------------
# A delete removes the row and keeps a tombstone with the row's rule columns, so a `_since` export can list it
# in its manifest's `deleted` array for exactly the partners who could have received it (exports.deleted).

_DELETE_WITH_TOMBSTONES = """
WITH gone AS (
    DELETE FROM pdex_resource r USING unnest(%s::text[], %s::text[]) AS k(resource_type, fhir_id)
    WHERE r.resource_type = k.resource_type AND r.fhir_id = k.fhir_id
    RETURNING r.*
)
INSERT INTO pdex_tombstone (resource_type, fhir_id, member_id, deleted_at, deleted_by, last_updated, service_start,
                            service_end, sensitive, clinical_status, eob_use, pa_status, pa_status_changed,
                            pa_period_end, pa_drug)
SELECT resource_type, fhir_id, member_id, %s, %s, last_updated, service_start, service_end, sensitive,
       clinical_status, eob_use, pa_status, pa_status_changed, pa_period_end, pa_drug
FROM gone
RETURNING resource_type, fhir_id
"""


def delete_resources(keys: Iterable[tuple[str, str]], *, deleted_by: str, now) -> set[tuple[str, str]]:
    """Delete these (type, id) from the store, each leaving a tombstone; returns those that were there."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return set()
    types, ids = zip(*keys, strict=True)
    with connection.cursor() as cursor:
        cursor.execute(_DELETE_WITH_TOMBSTONES, [list(types), list(ids), now, deleted_by[:200]])
        return {(row[0], row[1]) for row in cursor.fetchall()}


def forget_tombstones(keys: Iterable[tuple[str, str]]) -> None:
    """A resource written again is no longer deleted: its tombstones go (a `deleted` entry must never name a
    resource the same export sends)."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return
    types, ids = zip(*keys, strict=True)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pdex_tombstone t USING unnest(%s::text[], %s::text[]) AS k(resource_type, fhir_id)"
                       " WHERE t.resource_type = k.resource_type AND t.fhir_id = k.fhir_id", [list(types), list(ids)])


def expire_tombstones(*, now, retention_days: int) -> int:
    """Delete tombstones older than the retention (the maintenance sweep calls it); returns how many."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pdex_tombstone WHERE deleted_at < %s - make_interval(days => %s)",
                       [now, retention_days])
        return cursor.rowcount
