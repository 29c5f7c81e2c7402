"""Per-partition progress: whatever order, repetition and gaps the consumer delivers, clicks are applied once each,
in offset order, with what it skipped read from the broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_worker.progress import (
    PROGRESS_KEY,
    PartitionPlan,
    decode_progress,
    encode_progress,
    plan_partition,
)
from stream_worker.record import Record


def record(offset: int) -> Record:
    return Record(b"k", b"v%d" % offset, 0, offset)


def test_progress_round_trip_and_refusals() -> None:
    assert decode_progress(encode_progress(12345)) == 12345
    with pytest.raises(ValueError, match="bytes"):
        decode_progress(b"\x01\x02")
    with pytest.raises(ValueError, match="negative"):
        decode_progress(encode_progress(-5))
    with pytest.raises(UnicodeDecodeError):
        PROGRESS_KEY.decode("utf-8")  # so no session id key can collide with it


def test_plan_splits_at_progress_and_names_missing_ranges() -> None:
    plan = plan_partition(0, [record(o) for o in (7, 3, 12, 4, 12, 2)], progress=4)
    assert [r.offset for r in plan.redelivered] == [3, 2]
    assert plan.start == 4 and plan.end == 13
    assert plan.missing() == [(5, 7), (8, 12)]
    plan.fill([record(o) for o in range(0, 20)])  # a reader may return more than asked: only the gaps are taken
    assert [r.offset for r in plan.to_apply()] == list(range(4, 13))


def test_plan_without_progress_starts_at_the_lowest_delivered_offset() -> None:
    plan = plan_partition(0, [record(9), record(8)], progress=None)
    assert (plan.start, plan.end, plan.missing(), plan.redelivered) == (8, 10, [], [])


def test_truncate_bounds_the_batch_and_keeps_the_rest_above_its_progress() -> None:
    plan = plan_partition(0, [record(100_000)], progress=10)
    plan.truncate(50)
    assert (plan.end, plan.missing(), plan.to_apply()) == (60, [(10, 60)], [])
    stalled = PartitionPlan(0, 5, end=9)  # the catch-up plan: nothing delivered, all missing
    assert stalled.missing() == [(5, 9)]


@settings(max_examples=300, deadline=None)
@given(
    n_offsets=st.integers(1, 60),
    deliveries=st.lists(st.lists(st.integers(0, 59), max_size=20), max_size=12),
    limit=st.integers(1, 30),
    deleted_below=st.integers(0, 5),
)
def test_every_offset_applied_once_in_order_whatever_the_consumer_delivers(
    n_offsets: int, deliveries: list[list[int]], limit: int, deleted_below: int
) -> None:
    """Batches of offsets in any order, repeated, skipped or stale; the broker has [deleted_below, n_offsets)."""
    broker = {o: record(o) for o in range(deleted_below, n_offsets)}
    applied: list[int] = []
    progress = deleted_below

    def run(plan: PartitionPlan) -> int:
        plan.truncate(limit)
        for first, stop in plan.missing():
            plan.fill(broker[o] for o in range(first, stop) if o in broker)
        applied.extend(r.offset for r in plan.to_apply())
        return plan.end

    for batch in deliveries:
        records = [broker[o] for o in batch if o in broker]
        progress = run(plan_partition(0, records, progress))
    while progress < n_offsets:  # the catch-up timer, until the high-water mark
        progress = run(PartitionPlan(0, progress, end=n_offsets))
    assert applied == list(range(deleted_below, n_offsets))
