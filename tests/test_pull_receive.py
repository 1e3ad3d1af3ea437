"""What a resource received from a previous payer becomes in our store: our ids, our member, nothing of anyone
else, their Provenance narrowed to what we hold, our receipt Provenance — and taking the same file in twice
stores nothing the second time."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from pdex import ingest
from pdex.models import Resource
from requesting import consents
from requesting.models import CollectedConsent, PreviousPayer, PullJob, PullMember, PullUnit
from requesting.pull import receive, steps
from tests.builders import encounter, make_member, observation

SOURCE = receive.Source(name="Old Plan Health", npi="1234567893", fhir_base="https://old.example.org/fhir",
                        namespace=uuid.UUID("7f6b2c1e-3b0a-4c47-9a7e-0d1f2e3a4b5c"))
US = receive.Receiver(name="New Plan Health", npi="1999999999", organization_id="payer-new-plan")
MEMBERS = {"their-pat": "np-1"}


def test_ids_and_references_become_ours_and_their_patient_is_our_member():
    theirs = encounter("enc-1", "their-pat", timezone.now() - timedelta(days=30))
    theirs["serviceProvider"] = {"reference": "https://old.example.org/fhir/Organization/org-9"}
    theirs["partOf"] = {"reference": "Encounter/enc-0/_history/3"}
    theirs["basedOn"] = [{"reference": "urn:uuid:sr-1"}, {"reference": "https://elsewhere.example/ServiceRequest/1"}]
    local = receive.localize(theirs, source=SOURCE, members=MEMBERS)
    assert isinstance(local, receive.Localized) and local.member_fhir_id == "np-1"
    assert local.resource["id"] == SOURCE.local_id("enc-1") != "enc-1"
    assert local.resource["subject"] == {"reference": "Patient/np-1"}
    assert local.resource["serviceProvider"]["reference"] == f"Organization/{SOURCE.local_id('org-9')}"
    assert local.resource["partOf"]["reference"] == f"Encounter/{SOURCE.local_id('enc-0')}"
    assert local.resource["basedOn"] == [{"reference": f"urn:uuid:{SOURCE.local_id('sr-1')}"},
                                         {"reference": "https://elsewhere.example/ServiceRequest/1"}]
    assert theirs["id"] == "enc-1", "their resource is not changed in place"
    # The same resource always gets the same id here; another payer's resource with that id does not.
    other = receive.Source(name="Another", npi="1111111111", fhir_base="https://b.example/fhir", namespace=uuid.uuid4())
    assert receive.localize(theirs, source=SOURCE, members=MEMBERS).resource["id"] == local.resource["id"]
    assert receive.localize(theirs, source=other, members=MEMBERS).resource["id"] != local.resource["id"]


def test_their_patient_is_kept_linked_to_ours_and_nobody_else_is_taken_in():
    patient = {"resourceType": "Patient", "id": "their-pat", "name": [{"family": "Doe"}]}
    local = receive.localize(patient, source=SOURCE, members=MEMBERS)
    assert local.member_fhir_id == "np-1"
    assert local.resource["link"] == [{"other": {"reference": "Patient/np-1"}, "type": "seealso"}]
    stranger = observation("obs-9", "someone-else", timezone.now())
    assert receive.localize(stranger, source=SOURCE, members=MEMBERS) == receive.Skipped(receive.NOT_IN_PULL)
    unowned = {"resourceType": "Observation", "id": "obs-0", "status": "final", "code": {"text": "x"}}
    assert receive.localize(unowned, source=SOURCE, members=MEMBERS) == receive.Skipped(receive.NO_MEMBER)
    shared = receive.localize({"resourceType": "Practitioner", "id": "dr-1"}, source=SOURCE, members=MEMBERS)
    assert shared.member_fhir_id is None and shared.resource["id"] == SOURCE.local_id("dr-1")


def test_their_provenance_names_our_copies_and_keeps_only_targets_we_hold():
    provenance = {"resourceType": "Provenance", "id": "prov-1", "recorded": "2026-01-01T00:00:00Z",
                  "target": [{"reference": "Patient/their-pat"}, {"reference": "Encounter/enc-1"},
                             {"reference": "Encounter/enc-of-a-revoked-member"}],
                  "agent": [{"who": {"reference": "Organization/payer-old-plan"}}]}
    local = receive.localize(provenance, source=SOURCE, members=MEMBERS)
    assert local.member_fhir_id is None
    assert [t["reference"] for t in local.resource["target"]][:2] == [
        f"Patient/{SOURCE.local_id('their-pat')}", f"Encounter/{SOURCE.local_id('enc-1')}"]
    held = {("Patient", SOURCE.local_id("their-pat")), ("Encounter", SOURCE.local_id("enc-1"))}
    narrowed = receive.narrow_targets(local.resource, held)
    assert len(narrowed["target"]) == 2 and len(local.resource["target"]) == 3
    assert receive.narrow_targets(local.resource, set()) is None


def test_the_receipt_provenance_says_from_whom_when_and_in_what_format():
    local = receive.localize(encounter("enc-1", "their-pat", timezone.now()), source=SOURCE, members=MEMBERS)
    receipt = receive.receipt_provenance(local, source=SOURCE, receiver=US, received_at=timezone.now())
    get_fhir_model_class("Provenance").model_validate(receipt)
    assert receipt["target"] == [{"reference": f"Encounter/{local.resource['id']}"}]
    agents = {a["type"]["coding"][0]["code"]: a["who"] for a in receipt["agent"]}
    assert agents["source"]["identifier"]["value"] == SOURCE.npi
    assert agents["custodian"] == {"reference": "Organization/payer-new-plan", "display": US.name}
    [entity] = receipt["entity"]
    assert entity["what"]["reference"] == "https://old.example.org/fhir/Encounter/enc-1"
    assert entity["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "hl7fhirr4"


@pytest.mark.django_db
def test_storing_what_was_received_is_idempotent_and_dates_our_version():
    make_member("np-1")
    now = timezone.now()
    received_at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # FHIR instants carry milliseconds
    items = [receive.localize(r, source=SOURCE, members=MEMBERS) for r in (
        encounter("enc-1", "their-pat", received_at - timedelta(days=30)),
        {"resourceType": "Patient", "id": "their-pat", "name": [{"family": "Doe"}]})]
    first = ingest.store_received([ingest.Received(i.resource, i.member_fhir_id) for i in items],
                                  received_at=received_at)
    assert len(first.stored) == 2
    copy = Resource.objects.get(resource_type="Patient", fhir_id=SOURCE.local_id("their-pat"))
    assert copy.member.fhir_id == "np-1" and copy.last_updated == received_at
    assert Resource.objects.filter(resource_type="Patient").count() == 2  # ours and their copy; one member
    later = received_at + timedelta(hours=1)
    again = [receive.localize(r, source=SOURCE, members=MEMBERS) for r in (
        encounter("enc-1", "their-pat", received_at - timedelta(days=30)),
        {"resourceType": "Patient", "id": "their-pat", "name": [{"family": "Doe"}], "gender": "female"})]
    second = ingest.store_received([ingest.Received(i.resource, i.member_fhir_id) for i in again], received_at=later,
                                   fresh_since=later)
    assert [r.key[0] for r in second.stored] == ["Patient"] and second.unchanged == 1
    assert Resource.objects.get(fhir_id=SOURCE.local_id("enc-1")).last_updated == received_at
    # A second attempt of the same pull (begun before any of this) recognises what was already taken in.
    third = ingest.store_received([ingest.Received(i.resource, i.member_fhir_id) for i in again], received_at=later,
                                  fresh_since=received_at - timedelta(minutes=5))
    assert (len(third.stored), len(third.repeated), third.unchanged) == (0, 2, 0)


@pytest.mark.django_db
def test_a_batch_takes_in_nothing_of_a_member_whose_consent_ended_meanwhile_nor_an_invalid_line(settings):
    settings.PAYER_NPI = "1999999999"
    payer = PreviousPayer.objects.create(name=SOURCE.name, npi=SOURCE.npi, fhir_base_url=SOURCE.fhir_base,
                                         id_namespace=SOURCE.namespace)
    job = PullJob.objects.create(previous_payer=payer, status=PullJob.Status.RUNNING, started_at=timezone.now())
    today = timezone.localdate()
    members = {}
    for theirs, ours in (("a-1", "np-1"), ("a-2", "np-2")):
        member = make_member(ours)
        consent = CollectedConsent.objects.create(
            member=member, previous_payer=payer, policy="sensitive", period_start=today,
            period_end=today + timedelta(days=90), coverage_start=today, old_member_id="M", resource={},
            collected_via="t")
        PullMember.objects.create(job=job, member=member, consent=consent, outcome=PullMember.Outcome.MATCHED,
                                  their_patient_id=theirs)
        members[ours] = (member, consent)
    consents.revoke_consent(members["np-2"][1], reason="withdrawn", actor="t")
    unit = PullUnit.objects.create(job=job, sequence=1, step=PullUnit.Step.FILE, resource_type="Encounter")
    when = timezone.now() - timedelta(days=10)
    lines = [json.dumps(encounter("e-1", "a-1", when)), json.dumps(encounter("e-2", "a-2", when)),
             json.dumps({**encounter("e-3", "a-1", when), "period": {"start": "the 3rd of May"}}),
             json.dumps(encounter("e-4", "a-9", when))]
    done = steps.FileDone()
    theirs, member_ids = steps.member_maps(job)
    steps.take_in(lines, job=job, unit=unit, done=done, theirs=theirs, member_ids=member_ids)
    assert (done.received, done.ingested, done.invalid) == (4, 1, 1)
    assert done.dropped == {steps.LAPSED: 1, receive.NOT_IN_PULL: 1}
    assert not Resource.objects.filter(member=members["np-2"][0]).exclude(resource_type="Patient").exists()
    stored = Resource.objects.get(resource_type="Encounter", member=members["np-1"][0])
    receipts = Resource.objects.filter(resource_type="Provenance", member=members["np-1"][0])
    assert [r.body["target"] for r in receipts] == [[{"reference": f"Encounter/{stored.fhir_id}"}]]
    assert "3rd of May" not in json.dumps(done.notes) and "invalid Encounter" in done.notes[0]
