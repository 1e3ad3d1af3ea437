"""Splitting an export into chunks by size. Pure: data in, a plan out.

A chunk is the unit a worker leases, writes and may redo. It is sized by the rows it will write (estimated
from the member's row counts per type), not by a number of members: a chunk of a type everyone has many of
(Observation) holds few members, one of a rare type (Device) many, and types so small their whole export is
less than one chunk share a chunk. Members are fed in id order, so a re-plan gives the same chunks, and the
planner holds one open chunk per type — memory is flat however many members the export has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Resources that belong to no member: exported once per export, when an exported resource references them.
from pdex.extract import SHARED_TYPES


@dataclass(frozen=True)
class PlannedChunk:
    sequence: int
    resource_types: tuple[str, ...]
    member_ids: tuple[int, ...]
    regular_member_ids: tuple[int, ...]  # the members whose consent is #regular (non-sensitive data only)
    rows: int = 0  # estimated rows (before the rules)

    @property
    def resource_type(self) -> str:
        return self.resource_types[0]


@dataclass(frozen=True)
class MemberRows:
    """One member the export may include: their consent's sensitivity and their stored rows per type."""

    member_id: int
    include_sensitive: bool
    rows: Mapping[str, int]


def member_types(resource_types: Iterable[str]) -> list[str]:
    """The requested types that are exported per member (shared ones follow the references instead)."""
    return [resource_type for resource_type in dict.fromkeys(resource_types) if resource_type not in SHARED_TYPES]


@dataclass
class _Open:
    members: list[int] = field(default_factory=list)
    regular: list[int] = field(default_factory=list)
    rows: int = 0
    emitted: bool = False  # a chunk of this type was already cut: its rest is not "small"


class ChunkPlanner:
    """Feed members in id order (`add`), collect the chunks they fill; `finish` cuts the open ones.

    A type's chunk is cut before it would pass `target_rows` rows or `max_members` members (a member with
    more rows than the target gets a chunk of their own). A type whose whole export stayed under one chunk is
    "small": at `finish` small types are packed together into chunks under the same two limits, as many as
    their rows need, each about the same number of bytes. `line_bytes` is what a line of each type weighed
    in recent exports (`exports.files.line_bytes`): a row of ExplanationOfBenefit writes several times the
    bytes of an Observation, and the worker time of a chunk follows its bytes. Without it rows count alike.
    """

    def __init__(self, resource_types: Sequence[str], *, target_rows: int, max_members: int,
                 line_bytes: Mapping[str, float] | None = None):
        if target_rows < 1 or max_members < 1:
            raise ValueError("a chunk holds at least one row and one member")
        self.types = member_types(resource_types)
        self.target_rows, self.max_members = target_rows, max_members
        known = [weight for weight in (line_bytes or {}).values() if weight > 0]
        typical = sum(known) / len(known) if known else 1.0
        self.weight = {t: (line_bytes or {}).get(t) or typical for t in self.types}
        self.open = {t: _Open() for t in self.types}
        self.sequence = 0
        self.last_member: int | None = None

    def _cut(self, resource_types: tuple[str, ...], members: list[int], regular: list[int],
             rows: int) -> PlannedChunk:
        chunk = PlannedChunk(self.sequence, resource_types, tuple(members), tuple(regular), rows)
        self.sequence += 1
        return chunk

    def add(self, member: MemberRows) -> list[PlannedChunk]:
        """The chunks this member's rows completed (usually none)."""
        if self.last_member is not None and member.member_id <= self.last_member:
            raise ValueError("members are planned in increasing id order, each once")
        self.last_member = member.member_id
        cut: list[PlannedChunk] = []
        for resource_type in self.types:
            rows = member.rows.get(resource_type, 0)
            if rows <= 0:
                continue  # nothing of this type: the member is in none of its chunks
            current = self.open[resource_type]
            if current.members and (current.rows + rows > self.target_rows
                                    or len(current.members) >= self.max_members):
                cut.append(self._cut((resource_type,), current.members, current.regular, current.rows))
                self.open[resource_type] = current = _Open(emitted=True)
            current.members.append(member.member_id)
            if not member.include_sensitive:
                current.regular.append(member.member_id)
            current.rows += rows
        return cut

    def finish(self) -> list[PlannedChunk]:
        """The open chunks: small types packed together, the rest alone."""
        cut: list[PlannedChunk] = []
        small: list[tuple[str, _Open]] = []
        for resource_type in self.types:
            current = self.open[resource_type]
            if not current.members:
                continue
            if current.emitted:
                cut.append(self._cut((resource_type,), current.members, current.regular, current.rows))
            else:
                small.append((resource_type, current))
        # As many packed chunks as the rows need; each aims at an equal share of the bytes still to pack.
        chunks_left = -(-sum(current.rows for _, current in small) // self.target_rows)
        bytes_left = sum(current.rows * self.weight[t] for t, current in small)
        types: list[str] = []
        members: set[int] = set()
        regular: set[int] = set()
        rows = 0
        size = 0.0
        for resource_type, current in small:
            together = members | set(current.members)
            adding = current.rows * self.weight[resource_type]
            goal = bytes_left / max(chunks_left, 1)
            over = rows + current.rows > self.target_rows or len(together) > self.max_members
            if types and (over or abs(size - goal) < abs(size + adding - goal)):
                cut.append(self._cut(tuple(types), sorted(members), sorted(regular), rows))
                bytes_left -= size
                chunks_left -= 1
                types, members, regular, rows, size, together = [], set(), set(), 0, 0.0, set(current.members)
            types.append(resource_type)
            members = together
            regular |= set(current.regular)
            rows += current.rows
            size += adding
        if types:
            cut.append(self._cut(tuple(types), sorted(members), sorted(regular), rows))
        self.open = {t: _Open() for t in self.types}
        return cut


def plan_chunks(members: Iterable[MemberRows], resource_types: Sequence[str], *, target_rows: int,
                max_members: int, line_bytes: Mapping[str, float] | None = None) -> list[PlannedChunk]:
    """Every chunk of these members at once (the planner fed in id order; tests and small callers)."""
    planner = ChunkPlanner(resource_types, target_rows=target_rows, max_members=max_members, line_bytes=line_bytes)
    chunks: list[PlannedChunk] = []
    for member in sorted(members, key=lambda m: m.member_id):
        chunks += planner.add(member)
    return chunks + planner.finish()


PARTS_PER_CHUNK = 1000


def part_sequence(chunk_sequence: int, part: int, parts_per_chunk: int = PARTS_PER_CHUNK) -> int:
    """The sequence of a chunk's `part`-th segment: every chunk owns its own range, so keys never clash."""
    if not 0 <= part < parts_per_chunk:
        raise ValueError(f"a chunk writes at most {parts_per_chunk} segments; raise EXPORT_FILE_MAX_BYTES")
    return chunk_sequence * parts_per_chunk + part


@dataclass(frozen=True)
class Segment:
    """A chunk's output of one type, as finalize packs it: its key, lines and bytes."""

    storage_key: str
    count: int
    size: int


def pack(segments: Sequence[Segment], max_bytes: int) -> list[list[Segment]]:
    """Consecutive segments grouped into files of at most `max_bytes` (a bigger segment is a file alone).

    Segments keep their order (a chunk's lines stay in order and the files are deterministic); empty
    segments are dropped.
    """
    files: list[list[Segment]] = []
    size = 0
    for segment in segments:
        if not segment.size:
            continue
        if not files or size + segment.size > max_bytes:
            files.append([])
            size = 0
        files[-1].append(segment)
        size += segment.size
    return files
