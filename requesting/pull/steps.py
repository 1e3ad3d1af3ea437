"""The work of each unit of a pull: the match, the export, one file. Each returns what it found; recording it
is the stage machine's business (requesting.pull.stages), in the transaction that marks the unit done.

A step that must wait on the previous payer raises `engine.Deferred` (their 202 and its Retry-After, or a
429): the unit goes back without counting an attempt. A step that failed for now raises (the engine backs
off and tries again, JOB_MAX_ATTEMPTS times); `client.Refused` fails the pull. The status URLs of their
jobs are kept on our job as soon as we have them, so a step that runs again polls the same job instead of
starting another.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pdex import ingest
from pdex.extract import member_reference
from pdex.jobs.engine import Deferred
from pdex.models import Resource
from requesting.client import PayerClient, Refused, Transient
from requesting.models import MemberLink, PullJob, PullMember, PullUnit
from requesting.pull import bundles, receive

log = logging.getLogger(__name__)

P2P_EXPORT_TYPE = "hl7.fhir.us.davinci-pdex#payertopayer"
MATCH_PARAMETERS = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters"
GROUP_CODES = {"match": PullMember.Outcome.MATCHED, "nomatch": PullMember.Outcome.NO_MATCH,
               "consentconstraint": PullMember.Outcome.CONSENT_CONSTRAINED}
MAX_NOTES = 20
LAPSED = "consent no longer valid"
FIRST_POLL_SECONDS = 1


# --- what the steps return -----------------------------------------------------------------------

@dataclass(frozen=True)
class MatchOutcome:
    member_fhir_id: str  # our Patient id, as we sent it
    outcome: str
    their_patient_id: str = ""
    their_umb: str = ""


@dataclass(frozen=True)
class MatchDone:
    outcomes: tuple[MatchOutcome, ...]
    group_id: str = ""
    lapsed: int = 0


@dataclass(frozen=True)
class ExportDone:
    manifest: dict[str, Any] | None  # None: nobody left to export
    lapsed: int = 0


@dataclass
class FileDone:
    received: int = 0
    ingested: int = 0
    unchanged: int = 0
    invalid: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text[:300])

    def unit_fields(self) -> dict[str, Any]:
        return {"received": self.received, "ingested": self.ingested, "unchanged": self.unchanged,
                "invalid": self.invalid, "dropped": dict(self.dropped), "notes": self.notes}


# --- who is in the pull --------------------------------------------------------------------------

def source_of(job: PullJob) -> receive.Source:
    payer = job.previous_payer
    return receive.Source(name=payer.name, npi=payer.npi, fhir_base=payer.fhir_base, namespace=payer.id_namespace)


def receiver() -> receive.Receiver:
    return receive.Receiver(name=settings.PAYER_NAME, npi=settings.PAYER_NPI,
                            organization_id=settings.PAYER_ORGANIZATION_ID)


def payers_of(job: PullJob) -> bundles.Payers:
    payer = job.previous_payer
    return bundles.Payers(their_npi=payer.npi, their_name=payer.name, their_member_id_system=payer.member_id_system,
                          our_npi=settings.PAYER_NPI, our_name=settings.PAYER_NAME,
                          our_member_id_system=settings.MEMBER_ID_SYSTEM)


def lapsed_members(job: PullJob) -> set[int]:
    """Members of this pull whose consent is no longer valid today (revoked, ended) — asked about no more."""
    today = timezone.localdate()
    members = PullMember.objects.filter(job=job).exclude(
        consent__status="active", consent__period_start__lte=today, consent__period_end__gte=today)
    return set(members.values_list("member_id", flat=True))


def match_facts(job: PullJob, *, lapsed: set[int]) -> list[bundles.MatchFacts]:
    """The MemberBundles' facts for the members still consented: our Patient, our card, their old card."""
    members = list(PullMember.objects.filter(job=job).exclude(member_id__in=lapsed)
                   .select_related("member", "consent").order_by("member_id"))
    patients = dict(Resource.objects.filter(resource_type="Patient", fhir_id__in=[m.member.fhir_id for m in members])
                    .values_list("fhir_id", "body"))
    links = MemberLink.objects.filter(previous_payer=job.previous_payer, member_id__in=[m.member_id for m in members])
    umbs = dict(links.values_list("member_id", "their_umb"))
    facts = []
    for pulled in members:
        patient = patients.get(pulled.member.fhir_id)
        if patient is None:
            continue  # no Patient of ours to send: left pending, reported as not matched
        consent = pulled.consent
        facts.append(bundles.MatchFacts(
            patient=patient, member_number=pulled.member.member_number or "", coverage_start=consent.coverage_start,
            old_member_id=consent.old_member_id, old_subscriber_id=consent.old_subscriber_id,
            old_relationship=consent.old_relationship, old_coverage_end=consent.old_coverage_end,
            consent=consent.resource, their_umb=umbs.get(pulled.member_id, "")))
    return facts


def give_up_if_stale(job: PullJob, what: str) -> None:
    started = job.started_at or job.created_at
    if timezone.now() - started > timedelta(hours=settings.P2P_REMOTE_JOB_MAX_HOURS):
        raise Refused(what, 0, f"no result after {settings.P2P_REMOTE_JOB_MAX_HOURS} hours; giving up")


def wait_on(job: PullJob, client: PayerClient, status_url: str, what: str) -> dict[str, Any]:
    """Their job's manifest, or Deferred by its Retry-After with its X-Progress kept on our job."""
    poll = client.poll(status_url)
    if poll.manifest is not None:
        return poll.manifest
    give_up_if_stale(job, what)
    PullJob.objects.filter(pk=job.pk).update(remote_progress=f"{what}: {poll.progress or 'in progress'}"[:120])
    raise Deferred(poll.retry_after, note=f"{what} in progress: {poll.progress}"[:300])


# --- the match -----------------------------------------------------------------------------------

def outcomes_from_groups(groups: list[dict[str, Any]]) -> tuple[tuple[MatchOutcome, ...], str]:
    """Who landed in which of their Groups, by the submitted Patient each Group contains; and the id of the
    MatchedMembers Group (the one to export)."""
    outcomes: dict[str, MatchOutcome] = {}
    group_id = ""
    for group in groups:
        codes = [c.get("code") for c in (group.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
        outcome = next((GROUP_CODES[c] for c in codes if c in GROUP_CODES), None)
        if outcome is None:
            continue
        if outcome == PullMember.Outcome.MATCHED:
            group_id = str(group.get("id") or "")
        contained = {c.get("id"): c for c in group.get("contained") or [] if isinstance(c, dict)}
        for member in group.get("member") or []:
            entity = member.get("entity") or {}
            submitted = next((e.get("valueReference", {}).get("reference", "") for e in entity.get("extension") or []
                              if e.get("url") == MATCH_PARAMETERS), "")
            patient = contained.get(submitted[1:]) if submitted.startswith("#") else None
            if not patient or not patient.get("id"):
                continue
            theirs = ""
            if outcome == PullMember.Outcome.MATCHED:
                reference = entity.get("reference", "")
                theirs = reference.split("/", 1)[1] if reference.startswith("Patient/") else ""
                if not theirs:
                    continue
            # A member in the matched Group wins over a no-match of another coverage of theirs (spec §2.4).
            if patient["id"] not in outcomes or outcome == PullMember.Outcome.MATCHED:
                outcomes[patient["id"]] = MatchOutcome(patient["id"], outcome, theirs)
    return tuple(outcomes.values()), group_id


def single_match(job: PullJob, client: PayerClient, facts: bundles.MatchFacts) -> MatchOutcome:
    """`$member-match` for one member: 200 names their Patient and UMB; 422 does not say why (spec §1.4)."""
    status, body = client.operation("Patient/$member-match", bundles.single_request(facts, payers_of(job)))
    patient_id = facts.patient["id"]
    if status != 200:
        return MatchOutcome(patient_id, PullMember.Outcome.NO_MATCH)
    values = {p.get("name"): p for p in body.get("parameter") or [] if isinstance(p, dict)}
    reference = (values.get("MemberId") or {}).get("valueReference", {}).get("reference", "")
    umb = (values.get("MemberIdentifier") or {}).get("valueIdentifier", {}).get("value", "")
    theirs = reference.rsplit("/", 1)[-1] if "Patient/" in reference else ""
    if not theirs:
        raise Refused("$member-match", 200, "the answer names no Patient (MemberId)")
    return MatchOutcome(patient_id, PullMember.Outcome.MATCHED, theirs, str(umb))


def match_step(unit: PullUnit, beat: Callable[[], None]) -> MatchDone:
    job = unit.job
    client = PayerClient(job.previous_payer)
    if job.single or not job.match_status_url:
        lapsed = lapsed_members(job)
        facts = match_facts(job, lapsed=lapsed)
        if not facts:
            return MatchDone((), lapsed=len(lapsed))
        if job.single:
            return MatchDone((single_match(job, client, facts[0]),), lapsed=len(lapsed))
        status_url = client.kick_off("Group/$bulk-member-match", bundles.bulk_request(facts, payers_of(job)))
        PullJob.objects.filter(pk=job.pk).update(match_status_url=status_url, remote_progress="match: kicked off")
        raise Deferred(FIRST_POLL_SECONDS, note="bulk member match kicked off")
    manifest = wait_on(job, client, job.match_status_url, "match")
    with_token = manifest.get("requiresAccessToken", True) is not False
    groups = [group for item in manifest["output"] if item.get("type") == "Group"
              for group in client.ndjson(item["url"], with_token=with_token)]
    beat()
    outcomes, group_id = outcomes_from_groups(groups)
    client.forget(job.match_status_url)
    return MatchDone(outcomes, group_id=group_id, lapsed=len(lapsed_members(job)))


# --- the export ----------------------------------------------------------------------------------

def export_request(job: PullJob, their_ids: list[str], *, narrowed: bool) -> tuple[str, dict[str, Any]]:
    """The kick-off: `$davinci-data-export` (payer-to-payer) of their MatchedMembers Group, or Patient/$export of
    the one member a `$member-match` found; `_since` for a follow-up pull; `patient` to leave out members whose
    consent ended since the match."""
    parameters: list[dict[str, Any]] = []
    if job.single:
        path = "Patient/$export"
    else:
        path = f"Group/{job.matched_group_id}/$davinci-data-export"
        parameters.append({"name": "exportType", "valueCanonical": P2P_EXPORT_TYPE})
    if job.since is not None:
        parameters.append({"name": "_since", "valueInstant": job.since.isoformat().replace("+00:00", "Z")})
    if job.single or narrowed:
        parameters += [{"name": "patient", "valueReference": {"reference": f"Patient/{their_id}"}}
                       for their_id in their_ids]
    return path, {"resourceType": "Parameters", "parameter": parameters}


def export_step(unit: PullUnit, beat: Callable[[], None]) -> ExportDone:
    job = unit.job
    client = PayerClient(job.previous_payer)
    if not job.export_status_url:
        lapsed = lapsed_members(job)
        matched = PullMember.objects.filter(job=job, outcome=PullMember.Outcome.MATCHED)
        keep = list(matched.exclude(member_id__in=lapsed).values_list("their_patient_id", flat=True))
        if not keep:
            return ExportDone(None, lapsed=len(lapsed))
        path, body = export_request(job, keep, narrowed=matched.filter(member_id__in=lapsed).exists())
        status_url = client.kick_off(path, body)
        PullJob.objects.filter(pk=job.pk).update(export_status_url=status_url, remote_progress="export: kicked off")
        raise Deferred(FIRST_POLL_SECONDS, note="export kicked off")
    manifest = wait_on(job, client, job.export_status_url, "export")
    return ExportDone(manifest, lapsed=len(lapsed_members(job)))


# --- one file --------------------------------------------------------------------------------------

def spool_path(unit: PullUnit) -> Path:
    folder = Path(settings.P2P_DOWNLOAD_DIR) / str(unit.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{unit.sequence:05d}-{unit.resource_type or 'file'}.ndjson"


def spooled_lines(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield line


def batched(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def member_maps(job: PullJob) -> tuple[dict[str, str], dict[str, int]]:
    """Their Patient id → our Patient id, and our Patient id → our member id, for the members they matched."""
    rows = (PullMember.objects.filter(job=job, outcome=PullMember.Outcome.MATCHED)
            .values_list("their_patient_id", "member__fhir_id", "member_id"))
    theirs = {their: ours for their, ours, _ in rows}
    return theirs, {ours: member_id for _, ours, member_id in rows}


def take_in(lines: list[str], *, job: PullJob, unit: PullUnit, done: FileDone, theirs: dict[str, str],
            member_ids: dict[str, int]) -> None:
    """Validate, localize and store one batch of lines with a receipt Provenance for each resource stored, in
    one transaction; consent is looked at again for every batch."""
    lapsed = lapsed_members(job)
    allowed = {their: ours for their, ours in theirs.items() if member_ids[ours] not in lapsed}
    source, now = source_of(job), timezone.now()
    kept: list[receive.Localized] = []
    for text in lines:
        done.received += 1
        try:
            resource = json.loads(text)
        except ValueError:
            done.invalid += 1
            done.note(f"line {done.received}: not JSON")
            continue
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind != unit.resource_type or not resource.get("id"):
            done.invalid += 1
            done.note(f"line {done.received}: not a {unit.resource_type} with an id")
            continue
        problem = ingest.validation_problem(text, kind)
        if problem:
            done.invalid += 1
            done.note(f"line {done.received}: {problem}")
            continue
        localized = receive.localize(resource, source=source, members=allowed)
        if isinstance(localized, receive.Skipped):
            owner = member_reference(resource)
            done.dropped[LAPSED if owner in theirs and owner not in allowed else localized.reason] += 1
            continue
        kept.append(localized)
    provenance = [item for item in kept if item.resource["resourceType"] == receive.PROVENANCE]
    if provenance:
        held = ingest.stored_members(key for item in provenance for key in receive.targets_of(item.resource))
        narrowed = []
        for item in kept:
            if item.resource["resourceType"] != receive.PROVENANCE:
                narrowed.append(item)
                continue
            resource = receive.narrow_targets(item.resource, set(held))
            if resource is None:
                done.dropped["Provenance of nothing we hold"] += 1
                continue
            owners = {held[key] for key in receive.targets_of(resource)} - {None}
            # One member's resources: the Provenance is that member's; several members': nobody's, never exported.
            narrowed.append(receive.Localized(resource, owners.pop() if len(owners) == 1 else None,
                                              item.their_type, item.their_id))
        kept = narrowed
    received = [ingest.Received(item.resource, item.member_fhir_id) for item in kept]
    by_identity = {id(r): item for r, item in zip(received, kept, strict=True)}
    with transaction.atomic():
        outcome = ingest.store_received(received, received_at=now, fresh_since=job.started_at)
        receipts = [ingest.Received(receive.receipt_provenance(by_identity[id(r)], source=source, receiver=receiver(),
                                                               received_at=now), r.member_fhir_id)
                    for r in outcome.stored if r.key[0] != receive.PROVENANCE]
        ingest.store_received(receipts, received_at=now, compare=False)  # a stored resource's receipt is new
    done.ingested += len(outcome.stored) + len(outcome.repeated)
    done.unchanged += outcome.unchanged


def file_step(unit: PullUnit, beat: Callable[[], None]) -> FileDone:
    """Download one file of their manifest, check its count, validate every line and take it in."""
    job = unit.job
    client = PayerClient(job.previous_payer)
    with_token = (job.export_manifest or {}).get("requiresAccessToken", True) is not False
    path = spool_path(unit)
    try:
        lines = client.download(unit.url, path, with_token=with_token, beat=beat)
        if unit.expected_count is not None and lines != unit.expected_count:
            raise Transient(f"{unit.resource_type} file: {lines} lines, the manifest says {unit.expected_count}")
        done = FileDone()
        if unit.manifest_kind == "error":
            for text in spooled_lines(path):
                done.received += 1
                issues = (json.loads(text).get("issue") or []) if text.strip().startswith("{") else []
                done.note("; ".join(str(i.get("diagnostics") or i.get("code", "")) for i in issues) or "(no text)")
            return done
        theirs, member_ids = member_maps(job)
        for batch in batched(spooled_lines(path), settings.P2P_INGEST_BATCH_LINES):
            take_in(batch, job=job, unit=unit, done=done, theirs=theirs, member_ids=member_ids)
            beat()
        return done
    finally:
        path.unlink(missing_ok=True)
