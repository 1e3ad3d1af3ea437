"""Chunk planning by size: members × types cut at a row target, small types merged, one sensitivity rule per
chunk; segments packed into files. Pure."""

import pytest

from exports.planning import ChunkPlanner, MemberRows, Segment, member_types, pack, part_sequence, plan_chunks


def rows(counts: dict[int, dict[str, int]], regular: set[int] = frozenset()) -> list[MemberRows]:
    return [MemberRows(m, m not in regular, c) for m, c in counts.items()]


def test_shared_types_are_not_chunked_per_member():
    assert member_types(["Patient", "Organization", "Observation", "Practitioner", "Location"]) == [
        "Patient", "Observation"]


def test_a_big_type_is_cut_at_the_row_target_and_small_types_share_a_chunk():
    members = rows({m: {"Observation": 40, "Patient": 1, "Device": 1 if m % 2 else 0} for m in range(1, 8)})
    chunks = plan_chunks(members, ["Patient", "Observation", "Device", "Organization"], target_rows=100,
                         max_members=50)
    assert [(c.resource_types, c.member_ids, c.rows) for c in chunks] == [
        (("Observation",), (1, 2), 80), (("Observation",), (3, 4), 80), (("Observation",), (5, 6), 80),
        (("Observation",), (7,), 40),
        (("Patient", "Device"), (1, 2, 3, 4, 5, 6, 7), 11),  # 7 + 4 rows: both whole types in one chunk
    ]
    assert [c.sequence for c in chunks] == list(range(5))


def test_a_member_with_nothing_of_a_type_is_in_none_of_its_chunks():
    chunks = plan_chunks(rows({1: {"Condition": 5}, 2: {}, 3: {"Condition": 5}}), ["Condition"], target_rows=100,
                         max_members=10)
    assert [c.member_ids for c in chunks] == [(1, 3)]


def test_every_member_lands_in_exactly_one_chunk_per_type_they_have():
    members = rows({m: {"Condition": m % 5, "Encounter": 3} for m in range(1, 101)})
    chunks = plan_chunks(members, ["Condition", "Encounter"], target_rows=17, max_members=7)
    for resource_type, having in (("Condition", [m for m in range(1, 101) if m % 5]),
                                  ("Encounter", list(range(1, 101)))):
        seen = [m for c in chunks if resource_type in c.resource_types for m in c.member_ids]
        assert sorted(seen) == having
    assert all(len(c.member_ids) <= 7 and (c.rows <= 17 or len(c.member_ids) == 1) for c in chunks)


def test_a_member_bigger_than_the_target_gets_a_chunk_alone():
    chunks = plan_chunks(rows({1: {"Observation": 5}, 2: {"Observation": 500}, 3: {"Observation": 5}}),
                         ["Observation"], target_rows=100, max_members=10)
    assert [c.member_ids for c in chunks] == [(1,), (2,), (3,)]


def test_merged_small_types_respect_both_limits():
    members = rows({m: {"Patient": 1, "Device": 1, "CarePlan": 1} for m in range(1, 4)})
    chunks = plan_chunks(members, ["Patient", "Device", "CarePlan"], target_rows=6, max_members=10)
    assert [c.resource_types for c in chunks] == [("Patient", "Device"), ("CarePlan",)]  # 3 + 3 + 3 > 6
    chunks = plan_chunks(members, ["Patient", "Device"], target_rows=100, max_members=2)
    assert [(c.resource_types, c.member_ids) for c in chunks] == [  # types cut once are never merged
        (("Patient",), (1, 2)), (("Device",), (1, 2)), (("Patient",), (3,)), (("Device",), (3,))]


def test_a_chunk_knows_which_of_its_members_hold_a_regular_consent():
    members = rows({m: {"Condition": 1} for m in range(1, 6)}, regular={2, 4, 5})
    chunks = plan_chunks(members, ["Condition"], target_rows=10, max_members=3)
    assert [(c.member_ids, c.regular_member_ids) for c in chunks] == [((1, 2, 3), (2,)), ((4, 5), (4, 5))]


def test_the_same_request_gives_the_same_plan():
    counts = {m: {"Patient": 1, "Claim": m % 7} for m in range(50, 0, -1)}
    first = plan_chunks(rows(counts), ["Patient", "Claim"], target_rows=20, max_members=4)
    second = plan_chunks(rows(dict(sorted(counts.items()))), ["Patient", "Claim"], target_rows=20, max_members=4)
    assert first == second


def test_members_come_in_increasing_order_and_planning_holds_one_open_chunk_per_type():
    planner = ChunkPlanner(["Observation"], target_rows=10, max_members=100)
    for m in range(1, 1001):
        planner.add(MemberRows(m, True, {"Observation": 3}))
        assert len(planner.open["Observation"].members) <= 4
    with pytest.raises(ValueError):
        planner.add(MemberRows(5, True, {}))


def test_no_members_no_chunks_and_repeated_types_plan_once():
    assert plan_chunks([], ["Patient"], target_rows=5, max_members=5) == []
    assert len(plan_chunks(rows({1: {"Patient": 1}}), ["Patient", "Patient"], target_rows=5, max_members=5)) == 1


def test_segments_are_packed_in_order_into_files_under_the_limit():
    segments = [Segment(f"s{n}", 1, size) for n, size in enumerate([40, 50, 20, 0, 90, 150, 10])]
    files = pack(segments, 100)
    assert [[s.storage_key for s in f] for f in files] == [["s0", "s1"], ["s2"], ["s4"], ["s5"], ["s6"]]
    assert pack([], 100) == []


def test_segment_sequences_of_chunks_never_overlap():
    assert part_sequence(0, 0) == 0
    assert part_sequence(3, 2) == 3002
    assert part_sequence(3, 999) < part_sequence(4, 0)
    with pytest.raises(ValueError):
        part_sequence(1, 1000)


def test_small_types_are_shared_out_by_the_bytes_their_lines_weigh():
    members = rows({m: {"Patient": 1, "Claim": 1, "Condition": 1, "ExplanationOfBenefit": 1} for m in range(1, 11)})
    types = ["Patient", "Claim", "Condition", "ExplanationOfBenefit"]
    by_rows = plan_chunks(members, types, target_rows=30, max_members=50)
    assert [c.resource_types for c in by_rows] == [("Patient", "Claim"), ("Condition", "ExplanationOfBenefit")]
    # An EOB line weighs five times the others: the cut moves so each chunk writes about the same bytes
    # (30 and 50 here, not 20 and 60), under the same row limit.
    weighed = plan_chunks(members, types, target_rows=30, max_members=50,
                          line_bytes={"Patient": 1, "Claim": 1, "Condition": 1, "ExplanationOfBenefit": 5})
    assert [c.resource_types for c in weighed] == [("Patient", "Claim", "Condition"), ("ExplanationOfBenefit",)]
    assert all(c.rows <= 30 for c in weighed)
    # A type no recent export wrote weighs what a typical known line does.
    assert plan_chunks(members, types, target_rows=30, max_members=50, line_bytes={"Claim": 1}) == by_rows
