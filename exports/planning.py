"""Splitting an export into chunks: slices of members × resource types. Pure: data in, a plan out.

A chunk is the unit a worker leases, writes and may redo; it is small enough that redoing one is cheap and
its memory is bounded, whatever the size of the export. Members are split by the consent policy the
planner found for them: each chunk knows which of its members hold a `#regular` consent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Resources that belong to no member: exported once per export, when an exported resource references them.
from pdex.extract import SHARED_TYPES


@dataclass(frozen=True)
class PlannedChunk:
    sequence: int
    resource_type: str
    member_ids: tuple[int, ...]
    regular_member_ids: tuple[int, ...]  # the members whose consent is #regular (non-sensitive data only)


def member_types(resource_types: Iterable[str]) -> list[str]:
    """The requested types that are exported per member (shared ones follow the references instead)."""
    return [resource_type for resource_type in resource_types if resource_type not in SHARED_TYPES]


def slices(member_ids: Sequence[int], size: int) -> list[tuple[int, ...]]:
    """Consecutive slices of at most `size` members, in id order so a re-plan gives the same slices."""
    if size < 1:
        raise ValueError("a chunk holds at least one member")
    ordered = sorted(set(member_ids))
    return [tuple(ordered[start:start + size]) for start in range(0, len(ordered), size)]


def plan_chunks(*, include_sensitive: Mapping[int, bool], resource_types: Sequence[str],
                chunk_members: int) -> list[PlannedChunk]:
    """One chunk per (slice of members × member resource type).

    `include_sensitive` maps each member who may be exported to whether their consent covers sensitive
    data (`#sensitive`) or not (`#regular`); the chunk carries its `#regular` members so the rules withhold
    their sensitive resources only. Members left out of the mapping contribute nothing.
    """
    types = member_types(dict.fromkeys(resource_types))
    chunks: list[PlannedChunk] = []
    for members in slices(list(include_sensitive), chunk_members):
        regular = tuple(member_id for member_id in members if not include_sensitive[member_id])
        for resource_type in types:
            chunks.append(PlannedChunk(len(chunks), resource_type, members, regular))
    return chunks


PARTS_PER_CHUNK = 1000


def part_sequence(chunk_sequence: int, part: int, parts_per_chunk: int = PARTS_PER_CHUNK) -> int:
    """The file sequence of a chunk's `part`-th file: every chunk owns its own range, so keys never clash."""
    if not 0 <= part < parts_per_chunk:
        raise ValueError(f"a chunk writes at most {parts_per_chunk} files; raise EXPORT_FILE_MAX_BYTES")
    return chunk_sequence * parts_per_chunk + part
