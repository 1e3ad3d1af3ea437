"""A requesting payer plays the exchange end to end against a running service, over HTTP only.

`make demo` calls `main(base_url)` once the service is up. The new plan registers (RFC 7591; an admin
approves it, as one would in Django admin), gets a SMART Backend Services token from the discovery
document and its own key, runs `$bulk-member-match` for members built from the loaded data (a mix of
outcomes), exports the MatchedMembers Group with `$davinci-data-export`, polls with a progress bar,
downloads and validates every file, and prints a summary.

The only things it takes from the database are what a real new plan would know from its own records:
each member's demographics and old insurance card (member id). Everything else goes over HTTP.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
REQUESTER_NPI = "1999999999"
MB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
REGULAR = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"
SENSITIVE = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive"
SCOPES = ("system/*.read http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch "
          "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match")
EXPORT_TYPE = "hl7.fhir.us.davinci-pdex#payertopayer"
# Per member, in turn: how the new plan's request differs from our records, and the outcome it should get.
SCENARIOS = [
    ("as on file, #sensitive consent", "match"),
    ("as on file, #regular consent", "match"),
    ("typo in the given name", "match"),
    ("consent expired last year", "consentconstraint"),
    ("as on file, #regular consent", "match"),
    ("wrong birth date and a lost card", "nomatch"),
]


@dataclass
class Partner:
    """The new plan's SMART client: its key, client id, and a token renewed when it runs out."""

    base: str
    client_id: str
    private_jwk: dict[str, Any]
    token_url: str
    session: requests.Session = field(default_factory=requests.Session)
    token: str = ""
    token_expires: float = 0.0

    def authorization(self) -> dict[str, str]:
        from pdex.auth.client import request_token

        if time.monotonic() > self.token_expires - 30:
            answer = request_token(self.token_url, self.client_id, self.private_jwk, SCOPES, session=self.session)
            self.token, self.token_expires = answer["access_token"], time.monotonic() + answer["expires_in"]
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path_or_url: str, **kwargs: Any) -> requests.Response:
        url = path_or_url if path_or_url.startswith("http") else f"{self.base}/fhir/{path_or_url}"
        headers = {"Accept": "application/fhir+json", **self.authorization(), **kwargs.pop("headers", {})}
        return self.session.request(method, url, headers=headers, timeout=60, **kwargs)

    def kick_off(self, path: str, body: dict[str, Any]) -> str:
        response = self.call("POST", path, json=body, headers={"Prefer": "respond-async",
                                                                "Content-Type": "application/fhir+json"})
        if response.status_code != 202:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.headers["Content-Location"]

    def wait(self, status_url: str, label: str) -> dict[str, Any]:
        """Poll as Bulk Data asks: honour Retry-After, show X-Progress, return the manifest."""
        with tqdm(desc=label, unit="step", disable=None, leave=True) as bar:
            while True:
                response = self.call("GET", status_url, headers={"Accept": "application/json"})
                if response.status_code == 200:
                    bar.update(max(0, (bar.total or bar.n) - bar.n))
                    return response.json()
                if response.status_code not in (202, 429):
                    raise RuntimeError(f"{label} failed ({response.status_code}): {response.text[:300]}")
                progress = re.search(r"(\d+)/(\d+)", response.headers.get("X-Progress", ""))
                if progress:
                    done, total = map(int, progress.groups())
                    bar.total = total
                    bar.update(done - bar.n)
                bar.set_postfix_str(response.headers.get("X-Progress", ""))
                time.sleep(float(response.headers.get("Retry-After", "2")))

    def download(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.call("GET", item["url"], headers={"Accept": "application/fhir+ndjson"})
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def register(base: str) -> Partner:
    """RFC 7591 registration with a fresh ES384 key; the plan's admin then approves the pending partner."""
    from pdex import partners
    from pdex.auth.client import discover
    from pdex.management.commands.make_client_keys import generate_private_jwk, public_jwks
    from pdex.models import Partner as PartnerRecord

    configuration = discover(f"{base}/fhir")
    private_jwk = generate_private_jwk("ES384")
    response = requests.post(configuration["registration_endpoint"], timeout=30, json={
        "client_name": "Demo New Plan", "jwks": public_jwks(private_jwk), "scope": SCOPES,
        "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"],
        "npi": REQUESTER_NPI,
    })
    response.raise_for_status()
    client_id = response.json()["client_id"]
    record = PartnerRecord.objects.get(application__client_id=client_id)
    partners.approve(record, actor="demo admin")
    PartnerRecord.objects.filter(pk=record.pk).update(agreement_date=date.today())  # and files the agreement
    return Partner(base=base, client_id=client_id, private_jwk=private_jwk,
                   token_url=configuration["token_endpoint"])


def member_bundle(patient: dict[str, Any], member_number: str, scenario: str, today: date) -> dict[str, Any]:
    """One MemberBundle as the new plan would send it: its own copy of the demographics, our old card."""
    name = next((n for n in patient.get("name", []) if n.get("use") == "official"), patient["name"][0])
    family, given = name.get("family", ""), list(name.get("given") or [""])
    birth, card = patient["birthDate"], member_number
    policy, period = SENSITIVE, {"start": (today - timedelta(days=30)).isoformat(),
                                 "end": (today + timedelta(days=335)).isoformat()}
    if "#regular" in scenario:
        policy = REGULAR
    if scenario.startswith("typo"):
        given[0] = given[0][0] + given[0][2:3] + given[0][1:2] + given[0][3:]
    elif scenario.startswith("consent expired"):
        period = {"start": (today - timedelta(days=730)).isoformat(), "end": (today - timedelta(days=365)).isoformat()}
    elif scenario.startswith("wrong birth date"):
        birth, card = (date.fromisoformat(birth) + timedelta(days=400)).isoformat(), "LOST-CARD"
    local_id = f"new-plan-{patient['id'][:8]}"
    member_patient = {"resourceType": "Patient", "id": local_id, "birthDate": birth, "gender": patient.get("gender"),
                      "name": [{"use": "official", "family": family, "given": given}],
                      "identifier": [{"type": MB, "system": "https://new-plan.example.org/member",
                                      "value": f"NP-{patient['id'][:8]}"}],
                      "address": [{"postalCode": a["postalCode"]} for a in patient.get("address", [])[:1]
                                  if a.get("postalCode")]}
    from django.conf import settings

    coverage = {"resourceType": "Coverage", "id": f"old-card-{local_id}", "status": "active",
                "identifier": [{"type": MB, "system": settings.MEMBER_ID_SYSTEM, "value": card}],
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "code": "self"}]},
                "beneficiary": {"reference": f"Patient/{local_id}"},
                "payor": [{"identifier": {"system": NPI_SYSTEM, "value": settings.PAYER_NPI}}]}
    actor = [
        {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                              "code": "performer"}]},
         "reference": {"identifier": {"system": NPI_SYSTEM, "value": settings.PAYER_NPI}}},
        {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                              "code": "IRCP"}]},
         "reference": {"identifier": {"system": NPI_SYSTEM, "value": REQUESTER_NPI}}},
    ]
    consent = {"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                         "code": "IDSCL"}]}],
               "patient": {"reference": f"Patient/{local_id}"}, "performer": [{"reference": f"Patient/{local_id}"}],
               "sourceReference": {"reference": "DocumentReference/signed-consent-form"},
               "policy": [{"uri": policy}],
               "provision": {"type": "permit", "period": period, "actor": actor,
                             "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                                     "code": "disclose"}]}]}}
    return {"name": "MemberBundle", "part": [{"name": "MemberPatient", "resource": member_patient},
                                             {"name": "CoverageToMatch", "resource": coverage},
                                             {"name": "Consent", "resource": consent}]}


def stranger_bundle(today: date) -> dict[str, Any]:
    """Someone who was never our member."""
    stranger = {"id": "stranger", "birthDate": "1980-02-29", "gender": "female",
                "name": [{"use": "official", "family": "Nobody", "given": ["Never"]}], "address": []}
    return member_bundle(stranger, "NOT-OURS-0001", "as on file, #sensitive consent", today)


def members_request(limit: int) -> tuple[dict[str, Any], Counter]:
    """MemberBundles for up to `limit` of our members, cycling through SCENARIOS, plus one stranger."""
    from pdex.models import Member, Resource

    today = date.today()
    expected: Counter = Counter({"nomatch": 1})
    bundles = [stranger_bundle(today)]
    members = Member.objects.exclude(member_number="").order_by("fhir_id")[:limit]
    for index, member in enumerate(members):
        patient = Resource.objects.get(resource_type="Patient", fhir_id=member.fhir_id).body
        scenario, outcome = SCENARIOS[index % len(SCENARIOS)]
        bundles.append(member_bundle(patient, member.member_number, scenario, today))
        expected[outcome] += 1
    return {"resourceType": "Parameters", "parameter": bundles}, expected


def validate(resources: list[dict[str, Any]]) -> int:
    """How many lines fail the FHIR R4 (R4B models) parse; every line should pass."""
    from fhir.resources.R4B import get_fhir_model_class

    failures = 0
    for resource in resources:
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except Exception:  # noqa: BLE001 - any parse failure counts
            failures += 1
    return failures


def main(base_url: str, *, members: int = 50) -> dict[str, Any]:
    """Play the new plan end to end; returns the summary it prints."""
    started = time.monotonic()
    partner = register(base_url)
    print(f"registered as client {partner.client_id} (approved by the plan's admin); token from discovery")

    request, expected = members_request(members)
    match_started = time.monotonic()
    status_url = partner.kick_off("Group/$bulk-member-match", request)
    manifest = partner.wait(status_url, "bulk member match")
    groups = [g for item in manifest["output"] if item["type"] == "Group" for g in partner.download(item)]
    outcomes = Counter({g["code"]["coding"][0]["code"]: len(g.get("member", [])) for g in groups})
    match_seconds = time.monotonic() - match_started
    matched = next(g for g in groups if g["code"]["coding"][0]["code"] == "match")

    export_started = time.monotonic()
    status_url = partner.kick_off(f"Group/{matched['id']}/$davinci-data-export", {
        "resourceType": "Parameters", "parameter": [{"name": "exportType", "valueString": EXPORT_TYPE}]})
    manifest = partner.wait(status_url, "export")
    per_type: Counter = Counter()
    invalid = 0
    for item in manifest["output"]:
        resources = partner.download(item)
        per_type[item["type"]] += len(resources)
        invalid += validate(resources)
    notes = sum(len(partner.download(item)) for item in manifest["error"])
    export_seconds = time.monotonic() - export_started

    summary = {"members": dict(outcomes), "expected": dict(expected), "resources": dict(sorted(per_type.items())),
               "invalid_lines": invalid, "error_file_lines": notes, "match_seconds": round(match_seconds, 1),
               "export_seconds": round(export_seconds, 1), "seconds": round(time.monotonic() - started, 1)}
    print("\nMembers per outcome:  " + ", ".join(f"{k} {v} (expected {expected[k]})" for k, v in outcomes.items()))
    print(f"Matched Group:        Group/{matched['id']}")
    print("Resources per type:")
    for resource_type, count in sorted(per_type.items()):
        print(f"  {resource_type:<22} {count:>7}")
    print(f"  {'total':<22} {sum(per_type.values()):>7}   ({invalid} failed FHIR R4 validation)")
    print(f"Error-file notes:     {notes}")
    print(f"Seconds:              match {match_seconds:.1f}, export {export_seconds:.1f}, "
          f"end to end {summary['seconds']:.1f}")
    return summary


if __name__ == "__main__":
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
