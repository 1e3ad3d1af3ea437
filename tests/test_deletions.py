"""Deletions: tombstones, the manifest's `deleted` array of `_since` exports (only what the partner could have
received), and their expiry by the maintenance sweep."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from pdex.jobs.tasks import sweep_stale_work
from pdex.models import Tombstone
from pdex.write import access, bundle
from tests.builders import consent_for, days_ago, encounter, make_member, match_group, observation, store, years_ago
from tests.conftest import issue_token
from tests.test_export_e2e import WORKER_ENV, Client


def writer(db) -> access.Writer:
    client = access.register_internal_client("clinical system")
    return access.Writer(name=client.name, granted=("system/*.write",))


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_deletion_after_a_first_export_is_in_the_next_since_export_only_for_who_could_see_it(
        fhir_base, file_storage, make_partner, celery_worker_process):
    celery_worker_process(extra_env=WORKER_ENV)
    member = make_member("p-del")
    sens_partner, reg_partner, stranger = make_partner("Sensitive Plan"), make_partner("Regular Plan"), make_partner()
    consent_for(member, sens_partner, policy="sensitive")
    consent_for(member, reg_partner, policy="regular")
    groups = {p.pk: match_group(p, [member]) for p in (sens_partner, reg_partner)}
    groups[stranger.pk] = match_group(stranger, [make_member("p-other")])
    store(observation("obs-plain", "p-del", days_ago(30)), member)
    store(observation("obs-sensitive", "p-del", days_ago(30), security=("R",)), member)
    store(encounter("enc-ancient", "p-del", years_ago(7)), member)  # outside the five-year window
    store(observation("obs-kept", "p-del", days_ago(20)), member)

    def export(partner, since: str | None = None) -> dict:
        client = Client(fhir_base, issue_token(partner))
        parameters = [{"name": "_since", "valueInstant": since}] if since else []
        response = client.kick_off(f"Group/{groups[partner.pk].pk}/$davinci-data-export", parameters)
        assert response.status_code == 202, response.text
        done = client.wait(response.headers["Content-Location"])
        assert done.status_code == 200, done.text
        manifest = done.json()
        manifest["deleted_lines"] = [json.loads(line) for line in client.download(manifest, "deleted")] \
            if "deleted" in manifest else []
        return manifest

    first = {p.pk: export(p) for p in (sens_partner, reg_partner, stranger)}
    assert all("deleted" not in manifest for manifest in first.values())  # no _since, no deleted array
    who = writer(None)
    for target in ("obs-plain", "obs-sensitive", "enc-ancient"):
        bundle.delete_resource("Observation" if target.startswith("obs") else "Encounter", target, who)

    def deleted(partner) -> set[str]:
        manifest = export(partner, since=first[partner.pk]["transactionTime"])
        for line in manifest["deleted_lines"]:
            assert line["resourceType"] == "Bundle" and line["type"] == "transaction"
            assert [e["request"]["method"] for e in line["entry"]] == ["DELETE"]
        return {e["request"]["url"] for line in manifest["deleted_lines"] for e in line["entry"]}

    assert deleted(sens_partner) == {"Observation/obs-plain", "Observation/obs-sensitive"}
    assert deleted(reg_partner) == {"Observation/obs-plain"}  # a #regular consent never saw the sensitive one
    assert deleted(stranger) == set()  # never this member's partner


def test_tombstones_expire_after_the_retention_by_the_maintenance_sweep(db, settings):
    settings.TOMBSTONE_RETENTION_DAYS = 30
    member = make_member("p-exp")
    who = writer(db)
    for fhir_id in ("obs-old", "obs-new"):
        store(observation(fhir_id, "p-exp", days_ago(5)), member)
        bundle.delete_resource("Observation", fhir_id, who)
    Tombstone.objects.filter(fhir_id="obs-old").update(deleted_at=timezone.now() - timedelta(days=31))
    assert sweep_stale_work()["tombstones_expired"] == 1
    assert list(Tombstone.objects.values_list("fhir_id", flat=True)) == ["obs-new"]
