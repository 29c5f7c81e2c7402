"""Per-partition progress: which delivered clicks still need applying, in offset order, and which offsets are missing.

Every partition of the sessions table holds one progress record beside the session states: the next clicks offset
to apply. Everything below it has been applied, exactly once and in offset order, because a batch only moves it
over a contiguous run of offsets: offsets the consumer did not deliver are read from the broker first. So the
table never depends on the consumer delivering each offset once and in order, or on its committed offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the reader's record type; this module does no I/O)
    from stream_worker.record import Record

PROGRESS_KEY = b"\xff\x00streamrec:progress"  # not UTF-8, so no session id (the other keys) can be equal to it
_PROGRESS = struct.Struct("<q")


def encode_progress(next_offset: int) -> bytes:
    return _PROGRESS.pack(next_offset)


def decode_progress(raw: bytes) -> int:
    """The next offset to apply; ValueError for bytes that are not a progress record."""
    if len(raw) != _PROGRESS.size:
        raise ValueError(f"progress record of {len(raw)} bytes, expected {_PROGRESS.size}")
    (next_offset,) = _PROGRESS.unpack(raw)
    if next_offset < 0:
        raise ValueError(f"negative progress offset {next_offset}")
    return int(next_offset)


@dataclass
class PartitionPlan:
    """What one batch does with one partition."""

    partition: int
    start: int  # the progress before the batch: first offset to apply
    delivered: dict[int, Record] = field(default_factory=dict)  # offset -> record, from ``start`` on
    redelivered: list[Record] = field(default_factory=list)  # below ``start``: applied before, skipped
    end: int = 0  # progress after the batch: one past the highest delivered offset (``start`` if none)

    def missing(self) -> list[tuple[int, int]]:
        """[first, stop) ranges of offsets between ``start`` and ``end`` that were not delivered."""
        ranges: list[tuple[int, int]] = []
        expected = self.start
        for offset in sorted(self.delivered):
            if offset > expected:
                ranges.append((expected, offset))
            expected = offset + 1
        if self.end > expected:
            ranges.append((expected, self.end))
        return ranges

    def fill(self, records: Iterable[Record]) -> None:
        """Add records read from the broker (only offsets this plan still needs)."""
        for record in records:
            if self.start <= record.offset < self.end:
                self.delivered.setdefault(record.offset, record)

    def truncate(self, max_offsets: int) -> None:
        """Keep at most ``max_offsets`` offsets from ``start`` (bounds what one batch reads from the broker); the
        records dropped here are above the progress this batch writes, so a later batch applies them."""
        if self.end - self.start > max_offsets:
            self.end = self.start + max_offsets
            self.delivered = {offset: r for offset, r in self.delivered.items() if offset < self.end}

    def to_apply(self) -> list[Record]:
        """The records to apply, in offset order (a missing offset the broker no longer has is skipped)."""
        return [self.delivered[offset] for offset in sorted(self.delivered)]


def plan_partition(partition: int, records: Sequence[Record], progress: int | None) -> PartitionPlan:
    """Split one partition's delivered records at its progress (None: nothing applied yet, start at the lowest)."""
    start = progress if progress is not None else min((r.offset for r in records), default=0)
    plan = PartitionPlan(partition, start, end=start)
    for record in records:
        if record.offset < start:
            plan.redelivered.append(record)
        else:
            plan.delivered.setdefault(record.offset, record)
            plan.end = max(plan.end, record.offset + 1)
    return plan
