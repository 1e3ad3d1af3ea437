"""A small payer world for export tests: a partner's match Group, members with consents, and data that
each P2P rule keeps or withholds — with the ids each rule expects to see and never to see.

Dates are relative to the real "now" (tests.builders), because a job's request time is the moment of its kick-off.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from fhir.resources.R4B import get_fhir_model_class

from consent.services import revoke
from matching.models import MemberMatchGroup
from pdex.jobs.models import OutputFile
from pdex.jobs.storage import get_storage
from pdex.models import Member, Partner
from tests.builders import (
    claim_eob,
    condition,
    consent_for,
    coverage,
    days_ago,
    days_from_now,
    document,
    encounter,
    make_member,
    match_group,
    observation,
    prior_auth,
    shared,
    store,
    years_ago,
)


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
    add(coverage(f"{key}-cov-old", p, start=years_ago(9), end=years_ago(6)), kept=True)  # Coverage has no window
    add(encounter(f"{key}-enc-near", p, days_ago(200), practitioner=f"{key}-prac"), kept=True)
    add(encounter(f"{key}-enc-old", p, days_ago(6 * 366), practitioner=f"{key}-prac-old"), kept=False)
    add(observation(f"{key}-obs-near", p, days_ago(100)), kept=True)
    add(observation(f"{key}-obs-sensitive", p, days_ago(90), security=("R",)), kept=not regular)
    add(condition(f"{key}-cond-active-old", p, days_ago(9 * 366), "active"), kept=True)
    add(condition(f"{key}-cond-resolved-old", p, days_ago(9 * 366), "resolved"), kept=False)
    add(claim_eob(f"{key}-eob-claim", p, days_ago(50), organization=f"{key}-org"), kept=True)
    add(prior_auth(f"{key}-pa-recent", p, "approved", changed=days_ago(60), period_end=days_from_now(60),
                   documents=(f"{key}-doc-pa",)), kept=True)
    add(document(f"{key}-doc-pa", p, days_ago(6 * 366)), kept=True)  # PA rule, never the window
    add(prior_auth(f"{key}-pa-old", p, "approved", changed=days_ago(2 * 366), period_end=days_ago(500)), kept=False)
    add(prior_auth(f"{key}-pa-denied", p, "denied", changed=days_ago(10)), kept=False)
    for resource_type, suffix in (("Practitioner", "prac"), ("Organization", "org")):
        store(shared(resource_type, f"{key}-{suffix}"))
        (world.expected if visible else world.withheld).add(f"{resource_type}/{key}-{suffix}")
    store(shared("Practitioner", f"{key}-prac-old"))
    world.withheld.add(f"Practitioner/{key}-prac-old")


def build_world(partner: Partner) -> World:
    """Four members: #sensitive, #regular, consent revoked after the match, and one outside the Group."""
    members = {key: make_member(f"pt-{key}-{partner.pk}") for key in ("sens", "reg", "revoked", "outsider")}
    consent_for(members["sens"], partner, policy="sensitive", via="bulk-member-match")
    consent_for(members["reg"], partner, policy="regular", via="bulk-member-match")
    revoked = consent_for(members["revoked"], partner, policy="sensitive", via="bulk-member-match")
    group = match_group(partner, [members["sens"], members["reg"], members["revoked"]])
    revoke(revoked, "member asked us to stop after the match")
    world = World(group=group, members=members)
    member_data(world, f"sens{partner.pk}", members["sens"], visible=True)
    member_data(world, f"reg{partner.pk}", members["reg"], visible=True, regular=True)
    member_data(world, f"rev{partner.pk}", members["revoked"], visible=False)
    member_data(world, f"out{partner.pk}", members["outsider"], visible=False)
    return world


def exported_lines(job) -> list[bytes]:
    """Every NDJSON line of a finished job's output files, read back from storage."""
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


def assert_p2p_export(lines: list[bytes], world: World, *, transmitter: bool = True) -> dict[str, dict]:
    """The P2P guarantees on an export's lines; returns the resources by "Type/id".

    `transmitter`: the export's types let Provenance and Organization in, so every resource has a transmitter
    Provenance and the Organization that Provenance names is exported too.
    """
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
    if not transmitter:
        assert not transmitted, "a transmitter Provenance although the types leave Provenance out"
        return resources
    assert exported == transmitted, "every exported resource has a transmitter Provenance, and only those"
    agents = {a["who"]["reference"] for r in resources.values() if r["resourceType"] == "Provenance"
              for a in r.get("agent", []) if "reference" in a.get("who", {})}
    assert f"Organization/{settings.PAYER_ORGANIZATION_ID}" in agents
    assert agents <= set(resources), f"dangling agents: {sorted(agents - set(resources))}"
    return resources
