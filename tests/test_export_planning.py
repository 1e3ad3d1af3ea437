"""Chunk planning: members split into slices × resource types, one sensitivity rule per chunk. Pure."""

import pytest

from exports.planning import member_types, part_sequence, plan_chunks, slices


def test_slices_are_sorted_deduplicated_and_bounded():
    assert slices([5, 3, 1, 3, 9, 7, 2], 3) == [(1, 2, 3), (5, 7, 9)]
    assert slices([], 10) == []
    with pytest.raises(ValueError):
        slices([1], 0)


def test_shared_types_are_not_chunked_per_member():
    assert member_types(["Patient", "Organization", "Observation", "Practitioner", "Location"]) == [
        "Patient", "Observation"]


def test_one_chunk_per_member_slice_and_type():
    members = {member_id: True for member_id in range(1, 8)}
    chunks = plan_chunks(include_sensitive=members, resource_types=["Patient", "Observation", "Organization"],
                         chunk_members=3)
    assert [(c.resource_type, c.member_ids) for c in chunks] == [
        ("Patient", (1, 2, 3)), ("Observation", (1, 2, 3)),
        ("Patient", (4, 5, 6)), ("Observation", (4, 5, 6)),
        ("Patient", (7,)), ("Observation", (7,)),
    ]
    assert [c.sequence for c in chunks] == list(range(6))


def test_every_member_lands_in_exactly_one_slice_per_type():
    members = {member_id: member_id % 3 == 0 for member_id in range(1, 101)}
    chunks = plan_chunks(include_sensitive=members, resource_types=["Condition", "Encounter"], chunk_members=7)
    for resource_type in ("Condition", "Encounter"):
        seen = [m for c in chunks if c.resource_type == resource_type for m in c.member_ids]
        assert sorted(seen) == list(range(1, 101))


def test_a_chunk_knows_which_of_its_members_hold_a_regular_consent():
    members = {1: True, 2: False, 3: True, 4: False, 5: False}
    chunks = plan_chunks(include_sensitive=members, resource_types=["Condition"], chunk_members=3)
    assert [(c.member_ids, c.regular_member_ids) for c in chunks] == [((1, 2, 3), (2,)), ((4, 5), (4, 5))]


def test_the_same_request_gives_the_same_plan():
    members = {m: m % 2 == 0 for m in range(50, 0, -1)}
    first = plan_chunks(include_sensitive=members, resource_types=["Patient", "Claim"], chunk_members=4)
    second = plan_chunks(include_sensitive=dict(sorted(members.items())), resource_types=["Patient", "Claim"],
                         chunk_members=4)
    assert first == second


def test_no_members_no_chunks():
    assert plan_chunks(include_sensitive={}, resource_types=["Patient"], chunk_members=5) == []


def test_repeated_types_plan_once():
    chunks = plan_chunks(include_sensitive={1: True}, resource_types=["Patient", "Patient"], chunk_members=5)
    assert len(chunks) == 1


def test_file_sequences_of_chunks_never_overlap():
    assert part_sequence(0, 0) == 0
    assert part_sequence(3, 2) == 3002
    assert part_sequence(3, 999) < part_sequence(4, 0)
    with pytest.raises(ValueError):
        part_sequence(1, 1000)
