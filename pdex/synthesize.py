"""Payer data on top of Synthea, generated deterministically: what a health plan holds besides clinical data.

Synthea has no Coverage, no prior authorizations, no sensitivity labels; every export rule needs them.
Everything here is a function of (seed, as_of, the loaded members): the same inputs give the same rows,
and running twice changes nothing. `multiply` makes K× the members with fresh ids in SQL, for benchmarks.
docs/data-store.md describes every choice.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import connection, transaction

from pdex.extract import SHARED_TYPES, format_instant
from pdex.identity import refresh_member_identity
from pdex.ingest import LoadReport, load_resources
from pdex.models import Member

SYNTHETIC_PREFIX = "syn-"
COPY_MARK = "-x"
SYNTH_TAG_SYSTEM = "https://github.com/pdex-p2p/synthesized"
HREX_COVERAGE = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-coverage"
PA_PROFILE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization"
REVIEW_ACTION = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewAction"
REVIEW_ACTION_CODE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-reviewActionCode"
WHEN_ADJUDICATED = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-when-adjudicated"
LEVEL_OF_SERVICE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/extension-levelOfServiceCode"
PAS_INFO_TYPE = "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASSupportingInfoType"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# One in LABEL_EVERY clinical resources gets a sensitivity label (chosen by a hash of seed and id).
LABEL_EVERY = 50
LABELLED_TYPES = ("Encounter", "Condition", "Observation", "Procedure", "MedicationRequest", "Claim",
                  "ExplanationOfBenefit", "DiagnosticReport")
SECURITY_LABELS = (
    (ACT_CODE, "PSY", "psychiatry information sensitivity"),
    (ACT_CODE, "SUD", "substance use disorder information sensitivity"),
    (ACT_CODE, "HIV", "HIV/AIDS information sensitivity"),
    (CONFIDENTIALITY, "R", "restricted"),
)


@dataclass(frozen=True)
class PaScenario:
    """One kind of prior authorization, its timeline in days relative to as_of."""

    name: str
    review_action: str          # X12 306 code
    changed_days_ago: int
    period: tuple[int, int]     # preAuthRefPeriod start/end, days from as_of
    status: str = "active"
    outcome: str = "complete"
    drug: bool = False


PA_SCENARIOS = (
    PaScenario("approved-current", "A1", 45, (-40, 140)),
    PaScenario("pending", "A4", 6, (10, 100), outcome="queued"),
    PaScenario("approved-changed-recently", "A1", 200, (-200, -100)),
    PaScenario("approved-changed-long-ago", "A1", 1100, (-1100, -1000)),
    PaScenario("denied", "A3", 60, (-60, 120)),
    PaScenario("drug-approved", "A1", 30, (-30, 335), drug=True),
    PaScenario("partial-current", "A2", 120, (-120, 60), outcome="partial"),
    PaScenario("cancelled", "C", 150, (-150, -30), status="cancelled"),
)
PA_PER_MEMBER = 3
PA_SERVICES = (
    (CPT, "70551", "MRI brain without contrast"),
    (CPT, "27447", "Total knee arthroplasty"),
    (CPT, "97110", "Therapeutic exercise, each 15 minutes"),
    (CPT, "90837", "Psychotherapy, 60 minutes"),
    (CPT, "E0601", "Continuous positive airway pressure (CPAP) device"),
)
PA_DRUGS = ((RXNORM, "1551300", "adalimumab 40 MG/0.4 ML Prefilled Syringe"),
            (RXNORM, "1992685", "semaglutide 1 MG/0.75 ML Pen Injector"))


@dataclass
class SynthesisReport:
    members: int = 0
    generated: Counter = field(default_factory=Counter)
    labelled: int = 0
    runoff: int = 0
    copies: int = 0
    load: LoadReport | None = None


def stable_hash(*parts: object) -> int:
    """A 32-bit hash that SQL computes identically: ('x'||substr(md5(text),1,8))::bit(32)::bigint."""
    return int(hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)  # noqa: S324 - not security


def member_number_for(seed: int, patient_id: str) -> str:
    return f"M{stable_hash(seed, 'member', patient_id) % 10**9:09d}"


def _at(as_of: date, days: int, seconds: int = 0) -> datetime:
    return datetime.combine(as_of, time(9, 0), tzinfo=UTC) + timedelta(days=days, seconds=seconds)


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _coding(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# --- resources ------------------------------------------------------------------------------------

def payer_organization() -> dict:
    """Our own Organization: the Coverage payor, the PA insurer and the Provenance transmitter."""
    return {
        "resourceType": "Organization", "id": settings.PAYER_ORGANIZATION_ID,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-organization"]},
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": settings.PAYER_NPI}],
        "active": True,
        "type": [_coding("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
        "name": settings.PAYER_NAME,
    }


def coverage(*, member: Member, seed: int, as_of: date, rng: random.Random) -> dict:
    """An hrex-coverage: member id (MB) in our system, subscriber id, our payor, group and plan, period."""
    birth = member.birth_date or date(1970, 1, 1)
    start = max(birth, as_of - relativedelta(years=rng.randint(6, 15), days=rng.randint(0, 364)))
    left = rng.random() < 0.3      # some members already left us: the usual payer-to-payer case
    period = {"start": start.isoformat()}
    changed = start
    if left:
        changed = as_of - timedelta(days=rng.randint(1, 60))
        period["end"] = changed.isoformat()
    child = relativedelta(as_of, birth).years < 18
    relationship = "child" if child else "self"
    return {
        "resourceType": "Coverage", "id": f"{SYNTHETIC_PREFIX}cov-{member.fhir_id}",
        "meta": {"profile": [HREX_COVERAGE], "lastUpdated": format_instant(_at(changed, 0))},
        "identifier": [{
            "type": _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MB", "Member Number"),
            "system": settings.MEMBER_ID_SYSTEM, "value": member_number_for(seed, member.fhir_id),
        }],
        "status": "active",
        "type": _coding(ACT_CODE, "HIP", "health insurance plan policy"),
        "subscriberId": subscriber_id_for(seed, member.fhir_id),
        "beneficiary": {"reference": f"Patient/{member.fhir_id}"},
        "relationship": _coding("http://terminology.hl7.org/CodeSystem/subscriber-relationship", relationship),
        "period": period,
        "payor": [{"reference": f"Organization/{settings.PAYER_ORGANIZATION_ID}", "display": settings.PAYER_NAME}],
        "class": [
            {"type": _coding("http://terminology.hl7.org/CodeSystem/coverage-class", "group"),
             "value": f"GRP-{rng.randint(100, 999)}", "name": "Employer group"},
            {"type": _coding("http://terminology.hl7.org/CodeSystem/coverage-class", "plan"),
             "value": f"PLN-{rng.choice(['GOLD', 'SILVER', 'BRONZE'])}", "name": "Health plan"},
        ],
    }


def subscriber_id_for(seed: int, patient_id: str) -> str:
    return f"S{stable_hash(seed, 'subscriber', patient_id) % 10**9:09d}"


def prior_authorization(*, member: Member, scenario: PaScenario, number: int, as_of: date, provider: str,
                        rng: random.Random) -> tuple[dict, dict]:
    """A PDex prior authorization EOB shaped like the IG example, and the DocumentReference supporting it."""
    pa_id = f"{SYNTHETIC_PREFIX}pa-{member.fhir_id}-{number}"
    doc_id = f"{SYNTHETIC_PREFIX}padoc-{member.fhir_id}-{number}"
    changed = _at(as_of, -scenario.changed_days_ago, rng.randint(0, 8 * 3600))
    created = changed - timedelta(days=rng.randint(1, 10))
    start, end = (_at(as_of, days) for days in scenario.period)
    system, code, display = rng.choice(PA_DRUGS if scenario.drug else PA_SERVICES)
    adjudications = [{
        "extension": [
            {"url": REVIEW_ACTION, "extension": [
                {"url": "number", "valueString": f"AUTH{stable_hash(pa_id) % 10**8:08d}"},
                {"url": REVIEW_ACTION_CODE, "valueCodeableConcept": _coding(
                    "https://codesystem.x12.org/005010/306", scenario.review_action)},
            ]},
            {"url": WHEN_ADJUDICATED, "valueDateTime": format_instant(changed)},
        ],
        "category": _coding("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", "Submitted Amount"),
        "amount": {"value": float(rng.randint(100, 5000)), "currency": "USD"},
    }]
    if scenario.review_action == "A3":
        adjudications.append({
            "category": _coding("http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PDexAdjudicationCategoryDiscriminator",
                                "denialreason"),
            "reason": _coding("https://codesystem.x12.org/external/886", "N10", "Not medically necessary"),
        })
    claim_type = "pharmacy" if scenario.drug else "professional"
    eob = {
        "resourceType": "ExplanationOfBenefit", "id": pa_id,
        "meta": {"profile": [PA_PROFILE], "lastUpdated": format_instant(changed),
                 "tag": [{"system": SYNTH_TAG_SYSTEM, "code": scenario.name}]},
        "extension": [{"url": LEVEL_OF_SERVICE, "valueCodeableConcept": _coding(
            "https://codesystem.x12.org/005010/1338", "U" if rng.random() < 0.3 else "E")}],
        "identifier": [{"system": f"{settings.FHIR_BASE_URL}/pa-identifier", "value": f"PA{stable_hash(pa_id):010d}"}],
        "status": scenario.status,
        "type": _coding("http://terminology.hl7.org/CodeSystem/claim-type", claim_type),
        "use": "preauthorization",
        "patient": {"reference": f"Patient/{member.fhir_id}"},
        "billablePeriod": {"start": _day(start), "end": _day(end)},
        "created": format_instant(created),
        "insurer": {"reference": f"Organization/{settings.PAYER_ORGANIZATION_ID}", "display": settings.PAYER_NAME},
        "provider": {"reference": provider},
        "outcome": scenario.outcome,
        "preAuthRef": [f"AUTH{stable_hash(pa_id) % 10**8:08d}"],
        "preAuthRefPeriod": [{"start": _day(start), "end": _day(end)}],
        "supportingInfo": [{
            "sequence": 1, "category": _coding(PAS_INFO_TYPE, "additionalInformation"),
            "valueReference": {"reference": f"DocumentReference/{doc_id}"},
        }],
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/{SYNTHETIC_PREFIX}cov-{member.fhir_id}"}}],
        "item": [{
            "sequence": 1,
            "category": _coding("https://x12.org/codes/service-type-codes", "88" if scenario.drug else "3"),
            "productOrService": _coding(system, code, display),
            "servicedPeriod": {"start": _day(start), "end": _day(end)},
            "adjudication": adjudications,
        }],
    }
    note = f"Clinical notes supporting prior authorization {pa_id} for {display}."
    document = {
        "resourceType": "DocumentReference", "id": doc_id,
        "meta": {"lastUpdated": format_instant(created),
                 "tag": [{"system": SYNTH_TAG_SYSTEM, "code": "pa-supporting-info"}]},
        "status": "current",
        "type": _coding("http://loinc.org", "34117-2", "History and physical note"),
        "category": [_coding("http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                             "clinical-note", "Clinical Note")],
        "subject": {"reference": f"Patient/{member.fhir_id}"},
        "date": format_instant(created),
        "content": [{"attachment": {"contentType": "text/plain",
                                    "data": base64.b64encode(note.encode()).decode()}}],
        "context": {"period": {"start": format_instant(created), "end": format_instant(created)}},
    }
    if code == "90837":  # a psychotherapy PA and its notes are mental-health information
        label = [{"system": ACT_CODE, "code": "PSY", "display": "psychiatry information sensitivity"}]
        eob["meta"]["security"] = label
        document["meta"]["security"] = label
    return eob, document


def visit(*, member: Member, kind: str, when: datetime, provider: str) -> list[dict]:
    """An Encounter with its Claim and claim EOB, for members missing old or recent history."""
    base = f"{SYNTHETIC_PREFIX}{kind}-{member.fhir_id}"
    coverage_ref = {"reference": f"Coverage/{SYNTHETIC_PREFIX}cov-{member.fhir_id}"}
    period = {"start": format_instant(when), "end": format_instant(when + timedelta(minutes=30))}
    service = _coding(SNOMED, "185349003", "Encounter for check up (procedure)")
    patient = {"reference": f"Patient/{member.fhir_id}"}
    claim_type = _coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional")
    item = {"sequence": 1, "productOrService": service, "servicedPeriod": period,
            "encounter": [{"reference": f"Encounter/{base}-enc"}]}
    return [
        {"resourceType": "Encounter", "id": f"{base}-enc", "status": "finished",
         "class": {"system": ACT_CODE, "code": "AMB"}, "type": [service], "subject": patient, "period": period,
         "serviceProvider": {"reference": provider}},
        {"resourceType": "Claim", "id": f"{base}-claim", "status": "active", "type": claim_type, "use": "claim",
         "patient": patient, "billablePeriod": period, "created": period["end"], "provider": {"reference": provider},
         "priority": _coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal"),
         "insurance": [{"sequence": 1, "focal": True, "coverage": coverage_ref}], "item": [item]},
        {"resourceType": "ExplanationOfBenefit", "id": f"{base}-eob", "status": "active", "type": claim_type,
         "use": "claim", "patient": patient, "billablePeriod": period, "created": period["end"],
         "insurer": {"reference": f"Organization/{settings.PAYER_ORGANIZATION_ID}"},
         "provider": {"reference": provider}, "outcome": "complete",
         "claim": {"reference": f"Claim/{base}-claim"},
         "insurance": [{"focal": True, "coverage": coverage_ref}], "item": [item]},
    ]


# --- selectors over the store ---------------------------------------------------------------------

def base_members() -> list[Member]:
    """Members loaded from data, not copies made by multiply."""
    return list(Member.objects.exclude(fhir_id__regex=rf"{COPY_MARK}[0-9]+$").order_by("fhir_id"))


def _member_facts(as_of: date) -> dict[int, dict]:
    """Per member: its most-referenced provider Organization and whether it has old / recent encounters."""
    floor = _at(as_of, 0) - relativedelta(years=settings.EXPORT_LOOKBACK_YEARS)
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT member_id,
                   count(*) FILTER (WHERE service_start < %s) AS old,
                   count(*) FILTER (WHERE service_start >= %s AND service_start <= %s) AS recent,
                   (SELECT ref FROM pdex_resource e2, unnest(e2.refs) ref
                     WHERE e2.member_id = e.member_id AND e2.resource_type = 'Encounter'
                       AND ref LIKE 'Organization/%%'
                     GROUP BY ref ORDER BY count(*) DESC, ref LIMIT 1) AS provider
            FROM pdex_resource e
            WHERE resource_type = 'Encounter' AND fhir_id NOT LIKE %s
            GROUP BY member_id
        """, [floor, floor, _at(as_of, 0), SYNTHETIC_PREFIX + "%"])
        return {row[0]: {"old": row[1], "recent": row[2], "provider": row[3]} for row in cursor.fetchall()}


# --- the whole synthesis --------------------------------------------------------------------------

def generate(*, seed: int, as_of: date) -> tuple[list[dict], int]:
    """Every generated resource, and how many members they are for."""
    resources = [payer_organization()]
    members = base_members()
    facts = _member_facts(as_of)
    floor = as_of - relativedelta(years=settings.EXPORT_LOOKBACK_YEARS)
    for index, member in enumerate(members):
        rng = random.Random(f"{seed}:{member.fhir_id}")
        fact = facts.get(member.id, {"old": 0, "recent": 0, "provider": None})
        provider = fact["provider"] or f"Organization/{settings.PAYER_ORGANIZATION_ID}"
        resources.append(coverage(member=member, seed=seed, as_of=as_of, rng=rng))
        for slot in range(PA_PER_MEMBER):
            scenario = PA_SCENARIOS[(index * PA_PER_MEMBER + slot) % len(PA_SCENARIOS)]
            resources += prior_authorization(member=member, scenario=scenario, number=slot + 1, as_of=as_of,
                                             provider=provider, rng=rng)
        born = member.birth_date or date(1900, 1, 1)
        if not fact["old"] and born < floor - timedelta(days=30):
            when = _at(max(born + timedelta(days=1), floor - timedelta(days=rng.randint(30, 900))), 0)
            resources += visit(member=member, kind="old", when=when, provider=provider)
        if not fact["recent"]:
            when = _at(as_of, -rng.randint(30, 700))
            resources += visit(member=member, kind="new", when=when, provider=provider)
    return resources, len(members)


_HASH_SQL = "('x' || substr(md5(%(seed)s || ':' || r.resource_type || '/' || r.fhir_id), 1, 8))::bit(32)::bigint"

LABEL_SQL = f"""
UPDATE pdex_resource r SET
    body = jsonb_set(r.body, '{{meta}}', COALESCE(r.body->'meta', '{{}}'::jsonb) || jsonb_build_object(
        'security', jsonb_build_array(jsonb_build_object(
            'system', (%(labels)s::text[][])[({_HASH_SQL} / %(every)s) %% 4 + 1][1],
            'code', (%(labels)s::text[][])[({_HASH_SQL} / %(every)s) %% 4 + 1][2],
            'display', (%(labels)s::text[][])[({_HASH_SQL} / %(every)s) %% 4 + 1][3])))),
    sensitive = true
WHERE r.resource_type = ANY(%(types)s) AND r.member_id IS NOT NULL AND r.fhir_id NOT LIKE %(synthetic)s
  AND r.eob_use <> 'preauthorization' AND {_HASH_SQL} %% %(every)s = 0
  AND NOT (COALESCE(r.body->'meta', '{{}}'::jsonb) ? 'security')
"""  # noqa: S608 - only constants are formatted in

# Run-off: per member, one claim EOB inside the window and one older than it were adjusted recently.
RUNOFF_SQL = f"""
WITH candidates AS (
    SELECT r.id, r.member_id, r.service_start < %(floor)s AS old, {_HASH_SQL} AS h
    FROM pdex_resource r
    WHERE r.resource_type = 'ExplanationOfBenefit' AND r.eob_use = 'claim' AND r.member_id IS NOT NULL
      AND r.fhir_id NOT LIKE %(synthetic)s AND r.service_start < %(recent_limit)s
), chosen AS (
    SELECT DISTINCT ON (member_id, old) id, old, h FROM candidates ORDER BY member_id, old, h, id
), stamped AS (
    SELECT id, old, (%(as_of)s::timestamptz - make_interval(days => (h %% 30)::int + 1)) AS updated FROM chosen
)
UPDATE pdex_resource r SET
    last_updated = s.updated,
    body = jsonb_set(r.body, '{{meta}}', COALESCE(r.body->'meta', '{{}}'::jsonb) || jsonb_build_object(
        'lastUpdated', to_char(s.updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'tag', jsonb_build_array(jsonb_build_object('system', %(tag_system)s::text,
                                                    'code', CASE WHEN s.old THEN 'runoff-outside-window'
                                                                 ELSE 'runoff' END))))
FROM stamped s
WHERE r.id = s.id AND r.last_updated IS DISTINCT FROM s.updated
"""  # noqa: S608 - only constants are formatted in


def label_sensitive(*, seed: int) -> int:
    """meta.security on a deterministic ~1/LABEL_EVERY of clinical resources; returns how many changed."""
    with connection.cursor() as cursor:
        cursor.execute(LABEL_SQL, {
            "seed": str(seed), "every": LABEL_EVERY, "types": list(LABELLED_TYPES),
            "labels": [list(label) for label in SECURITY_LABELS], "synthetic": SYNTHETIC_PREFIX + "%",
        })
        return cursor.rowcount


def mark_runoff(*, seed: int, as_of: date) -> int:
    """Give one in-window and one out-of-window claim EOB per member a recent lastUpdated (run-off claims)."""
    now = _at(as_of, 0)
    with connection.cursor() as cursor:
        cursor.execute(RUNOFF_SQL, {
            "seed": str(seed), "floor": now - relativedelta(years=settings.EXPORT_LOOKBACK_YEARS),
            "recent_limit": now - relativedelta(years=1), "as_of": now, "synthetic": SYNTHETIC_PREFIX + "%",
            "tag_system": SYNTH_TAG_SYSTEM,
        })
        return cursor.rowcount


def synthesize(*, seed: int, as_of: date | None = None, multiply: int = 1) -> SynthesisReport:
    """Coverage, prior authorizations, labels, history and run-off for every member; then copies if asked."""
    as_of = as_of or datetime.now(UTC).date()
    report = SynthesisReport()
    resources, report.members = generate(seed=seed, as_of=as_of)
    report.generated = Counter(r["resourceType"] for r in resources)
    # The Coverage goes through ingest like a payer's own, which copies its member id and subscriber id onto
    # the member (pdex.identity).
    report.load = load_resources(resources, source="synthesize_payer_data")
    with transaction.atomic():
        report.labelled = label_sensitive(seed=seed)
        report.runoff = mark_runoff(seed=seed, as_of=as_of)
    if multiply > 1:
        report.copies = multiply_members(multiply)
    return report


# --- multiply: K× the members in SQL --------------------------------------------------------------

# The copies' member number and subscriber id come from their copied Coverage, as every member's do
# (multiply_members ends with pdex.identity's refresh).
COPY_MEMBERS_SQL = """
INSERT INTO pdex_member (fhir_id, umb, subscriber_id, family, given, birth_date, gender, postal_code,
                         created_at, updated_at)
SELECT m.fhir_id || %(mark)s, 'UMB-' || upper(substr(md5(m.fhir_id || %(mark)s), 1, 12)), '',
       m.family || ' ' || lower(%(name_mark)s), m.given, m.birth_date, m.gender, m.postal_code, now(), now()
FROM pdex_member m
WHERE m.fhir_id !~ %(copy_pattern)s
ON CONFLICT (fhir_id) DO UPDATE SET
    family = EXCLUDED.family, given = EXCLUDED.given, birth_date = EXCLUDED.birth_date,
    gender = EXCLUDED.gender, postal_code = EXCLUDED.postal_code, updated_at = now()
WHERE (pdex_member.family, pdex_member.given, pdex_member.birth_date, pdex_member.gender, pdex_member.postal_code)
      IS DISTINCT FROM (EXCLUDED.family, EXCLUDED.given, EXCLUDED.birth_date, EXCLUDED.gender,
                        EXCLUDED.postal_code)
"""

# Every member-owned resource of the original member, with its id, the Patient id (wherever it appears,
# identifiers and urn:uuid included), references to member-owned resources, the member number and the
# subscriber id rewritten (when the member has them: chr(1) never occurs in JSON text, so an empty one matches
# nothing); the family name gets a suffix so copies are different people to matching.
# Extracted columns are copied: a copy has the same dates, labels and statuses as its original.
COPY_RESOURCES_SQL = """
WITH rewritten AS (
    SELECT r.resource_type, c.id AS member_id,
           CASE WHEN r.resource_type = 'Patient' THEN c.fhir_id
                ELSE replace(r.fhir_id, m.fhir_id, c.fhir_id) || %(mark)s END AS fhir_id,
           regexp_replace(
               replace(replace(replace(replace(r.body::text,
                   '"' || COALESCE(NULLIF(m.member_number, ''), chr(1)) || '"',
                   '"' || m.member_number || %(mark)s || '"'),
                   '"' || COALESCE(NULLIF(m.subscriber_id, ''), chr(1)) || '"',
                   '"' || m.subscriber_id || %(mark)s || '"'),
                   '"family": "' || COALESCE(r.body->'name'->0->>'family', chr(1)) || '"',
                   '"family": "' || COALESCE(r.body->'name'->0->>'family', chr(1)) || ' ' || %(name_mark)s || '"'),
                   m.fhir_id, m.fhir_id || %(mark)s),
               '"(' || %(types)s || ')/([^"/]+)"', '"\\1/\\2' || %(mark)s || '"', 'g')::jsonb AS body,
           r.last_updated, r.service_start, r.service_end, r.sensitive, r.clinical_status, r.eob_use,
           r.pa_status, r.pa_status_changed, r.pa_period_end, r.pa_drug, r.refs
    FROM pdex_resource r
    JOIN pdex_member m ON m.id = r.member_id
    JOIN pdex_member c ON c.fhir_id = m.fhir_id || %(mark)s
    WHERE m.fhir_id !~ %(copy_pattern)s
)
INSERT INTO pdex_resource (resource_type, fhir_id, member_id, body, last_updated, service_start, service_end,
                           sensitive, clinical_status, eob_use, pa_status, pa_status_changed, pa_period_end,
                           pa_drug, refs, ingested_at)
SELECT resource_type, fhir_id, member_id, jsonb_set(body, '{id}', to_jsonb(fhir_id)),
       last_updated, service_start, service_end, sensitive, clinical_status, eob_use, pa_status,
       pa_status_changed, pa_period_end, pa_drug, refs, now()
FROM rewritten
ON CONFLICT (resource_type, fhir_id) DO UPDATE SET
    member_id = EXCLUDED.member_id, body = EXCLUDED.body, last_updated = EXCLUDED.last_updated,
    service_start = EXCLUDED.service_start, service_end = EXCLUDED.service_end, sensitive = EXCLUDED.sensitive,
    clinical_status = EXCLUDED.clinical_status, eob_use = EXCLUDED.eob_use, pa_status = EXCLUDED.pa_status,
    pa_status_changed = EXCLUDED.pa_status_changed, pa_period_end = EXCLUDED.pa_period_end,
    pa_drug = EXCLUDED.pa_drug, refs = EXCLUDED.refs, ingested_at = now()
WHERE (pdex_resource.member_id, pdex_resource.body, pdex_resource.last_updated, pdex_resource.sensitive,
       pdex_resource.service_start, pdex_resource.pa_status, pdex_resource.pa_status_changed, pdex_resource.refs)
      IS DISTINCT FROM (EXCLUDED.member_id, EXCLUDED.body, EXCLUDED.last_updated, EXCLUDED.sensitive,
                        EXCLUDED.service_start, EXCLUDED.pa_status, EXCLUDED.pa_status_changed, EXCLUDED.refs)
"""


def member_owned_types() -> list[str]:
    """Resource types in the store that belong to a member and are referenced by type (not Patient)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT resource_type FROM pdex_resource WHERE member_id IS NOT NULL")
        return sorted({row[0] for row in cursor.fetchall()} - SHARED_TYPES - {"Patient"})


def multiply_members(factor: int) -> int:
    """Make the store hold `factor`× every member (copies 2..factor); returns resources written."""
    types = "|".join(member_owned_types())
    written = 0
    for copy in range(2, factor + 1):
        params = {"mark": f"{COPY_MARK}{copy}", "name_mark": f"X{copy}", "types": types,
                  "copy_pattern": rf"{COPY_MARK}[0-9]+$"}
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(COPY_MEMBERS_SQL, params)
            cursor.execute(COPY_RESOURCES_SQL, params)
            written += cursor.rowcount
    refresh_member_identity()
    return written
