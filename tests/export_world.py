"""A small payer world for export tests: a partner's match Group, members with consents, and data that
each P2P rule keeps or withholds — with the ids each rule expects to see and never to see.

Dates are relative to the real "now", because a job's request time is the moment of its kick-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from consent.decision import NPI_SYSTEM, RECIPIENT_ROLE, SOURCE_ROLE
from consent.models import Consent
from matching.models import GroupMember, MemberMatchGroup
from pdex.models import Member, Partner
from tests.export_fixtures import (
    claim_eob,
    condition,
    document,
    encounter,
    make_member,
    observation,
    prior_auth,
    shared,
    store,
)

POLICY_URIS = {"regular": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular",
               "sensitive": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive"}


def ago(**delta: float) -> str:
    return (timezone.now() - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def consent_resource(partner: Partner, policy: str) -> dict:
    today = timezone.now().date()
    actor = lambda role, npi: {"role": {"coding": [{"system": role[0], "code": role[1]}]},  # noqa: E731
                               "reference": {"identifier": {"system": NPI_SYSTEM, "value": npi}}}
    return {
        "resourceType": "Consent", "status": "active", "policy": [{"uri": POLICY_URIS[policy]}],
        "provision": {"type": "permit", "period": {"start": str(today - timedelta(days=30)),
                                                     "end": str(today + timedelta(days=365))},
                      "actor": [actor(SOURCE_ROLE, settings.PAYER_NPI), actor(RECIPIENT_ROLE, partner.npi)]},
    }


def give_consent(member: Member, partner: Partner, policy: str = "sensitive") -> Consent:
    today = timezone.now().date()
    return Consent.objects.create(
        member=member, partner=partner, policy=policy, policy_uri=POLICY_URIS[policy],
        period_start=today - timedelta(days=30), period_end=today + timedelta(days=365),
        resource=consent_resource(partner, policy), submitted_via="bulk-member-match")


def match_group(partner: Partner, members: list[Member], code: str = MemberMatchGroup.Code.MATCH) -> MemberMatchGroup:
    group = MemberMatchGroup.objects.create(partner=partner, code=code, resource={"resourceType": "Group"})
    GroupMember.objects.bulk_create([GroupMember(group=group, member=member) for member in members])
    return group


@dataclass
class World:
    group: MemberMatchGroup
    members: dict[str, Member]
    expected: set[str] = field(default_factory=set)  # "Type/id" that must be exported
    withheld: set[str] = field(default_factory=set)  # "Type/id" that must never be


def member_data(world: World, key: str, member: Member, *, visible: bool, regular: bool = False) -> None:
    """Data of one member covering every rule; `visible` False = the member must contribute nothing."""
    p = member.fhir_id

    def add(resource: dict, *, kept: bool) -> None:
        store(resource, member)
        ref = f"{resource['resourceType']}/{resource['id']}"
        (world.expected if kept and visible else world.withheld).add(ref)

    (world.expected if visible else world.withheld).add(f"Patient/{p}")
    add(encounter(f"{key}-enc-near", p, ago(days=200), practitioner=f"{key}-prac"), kept=True)
    add(encounter(f"{key}-enc-old", p, ago(days=6 * 366), practitioner=f"{key}-prac-old"), kept=False)
    add(observation(f"{key}-obs-near", p, ago(days=100)), kept=True)
    add(observation(f"{key}-obs-sensitive", p, ago(days=90), security=("R",)), kept=not regular)
    add(condition(f"{key}-cond-active-old", p, ago(days=9 * 366), "active"), kept=True)
    add(condition(f"{key}-cond-resolved-old", p, ago(days=9 * 366), "resolved"), kept=False)
    add(claim_eob(f"{key}-eob-claim", p, ago(days=50), organization=f"{key}-org"), kept=True)
    add(prior_auth(f"{key}-pa-recent", p, "approved", changed=ago(days=60), period_end=ago(days=-60),
                   documents=(f"{key}-doc-pa",)), kept=True)
    add(document(f"{key}-doc-pa", p, ago(days=6 * 366)), kept=True)  # PA rule, never the window
    add(prior_auth(f"{key}-pa-old", p, "approved", changed=ago(days=2 * 366), period_end=ago(days=500)), kept=False)
    add(prior_auth(f"{key}-pa-denied", p, "denied", changed=ago(days=10)), kept=False)
    for resource_type, suffix in (("Practitioner", "prac"), ("Organization", "org")):
        store(shared(resource_type, f"{key}-{suffix}"))
        (world.expected if visible else world.withheld).add(f"{resource_type}/{key}-{suffix}")
    store(shared("Practitioner", f"{key}-prac-old"))
    world.withheld.add(f"Practitioner/{key}-prac-old")


def build_world(partner: Partner) -> World:
    """Four members: #sensitive, #regular, consent revoked after the match, and one outside the Group."""
    members = {key: make_member(f"pt-{key}-{partner.pk}") for key in ("sens", "reg", "revoked", "outsider")}
    give_consent(members["sens"], partner, "sensitive")
    give_consent(members["reg"], partner, "regular")
    revoked = give_consent(members["revoked"], partner, "sensitive")
    group = match_group(partner, [members["sens"], members["reg"], members["revoked"]])
    revoked.status = Consent.Status.REVOKED
    revoked.save()
    world = World(group=group, members=members)
    member_data(world, f"sens{partner.pk}", members["sens"], visible=True)
    member_data(world, f"reg{partner.pk}", members["reg"], visible=True, regular=True)
    member_data(world, f"rev{partner.pk}", members["revoked"], visible=False)
    member_data(world, f"out{partner.pk}", members["outsider"], visible=False)
    return world


def exported_lines(job) -> list[bytes]:
    """Every NDJSON line of a finished job's output files, read back from storage."""
    from pdex.jobs.models import OutputFile
    from pdex.jobs.storage import get_storage

    storage = get_storage()
    lines: list[bytes] = []
    for output in OutputFile.objects.filter(job_id=job.id, kind=OutputFile.Kind.OUTPUT):
        data = b"".join(storage.read(output.storage_key))
        assert data.endswith(b"\n")
        lines.extend(data.splitlines())
    return lines


def _has_key(node, names: set[str]) -> bool:
    if isinstance(node, dict):
        return any(k in names or _has_key(v, names) for k, v in node.items())
    if isinstance(node, list):
        return any(_has_key(v, names) for v in node)
    return False


def assert_p2p_export(lines: list[bytes], world: World) -> dict[str, dict]:
    """The P2P guarantees on an export's lines; returns the resources by "Type/id"."""
    import json
    from collections import Counter

    from fhir.resources.R4B import get_fhir_model_class

    resources: dict[str, dict] = {}
    seen: Counter[str] = Counter()
    for line in lines:
        resource = json.loads(line)
        get_fhir_model_class(resource["resourceType"]).model_validate_json(line)  # valid FHIR R4
        ref = f"{resource['resourceType']}/{resource['id']}"
        seen[ref] += 1
        resources[ref] = resource
    assert not [ref for ref, n in seen.items() if n > 1], "a resource was exported twice"
    assert world.expected <= set(resources), f"missing: {sorted(world.expected - set(resources))}"
    assert not world.withheld & set(resources), f"leaked: {sorted(world.withheld & set(resources))}"
    for ref, resource in resources.items():
        if resource["resourceType"] == "ExplanationOfBenefit" and resource.get("use") == "claim":
            assert not _has_key(resource, {"payment", "total", "amount", "net", "unitPrice"}), ref
    transmitted = {t["reference"] for r in resources.values() if r["resourceType"] == "Provenance"
                   for t in r.get("target", []) if any(a.get("who", {}).get("reference", "").endswith(
                       settings.PAYER_ORGANIZATION_ID) for a in r.get("agent", []))}
    exported = {ref for ref in resources if not ref.startswith("Provenance/")}
    assert exported == transmitted, "every exported resource has a transmitter Provenance, and only those"
    return resources
