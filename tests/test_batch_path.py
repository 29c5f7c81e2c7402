"""The worker's batch path without a broker: ingest, plan, the order of publish/store, retries, catch-up, expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkit.artifact import load_artifact
from schemas import ClickEvent, DeadLetter, Prediction
from stream_worker.batch_path import BatchPath
from stream_worker.ingest import parse_click, session_key
from stream_worker.online_metrics import OnlineEvaluator
from stream_worker.processor import Click, process_batch
from stream_worker.record import Record
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState
from stream_worker.settings import WorkerSettings
from stream_worker.stats import WorkerStats
from stream_worker.web import consumer_lags
from tests.support.artifacts import random_artifact

N_ITEMS, HIDDEN = 40, 8
CLICKS, PREDICTIONS, DEAD_LETTERS = "t-clicks", "t-predictions", "t-dead-letter"


def _model(tmp_path: Path) -> ServingModel:
    path = random_artifact(tmp_path, "v1", items=N_ITEMS, layers=(HIDDEN,), noise=0.5, make_current=False)
    return ServingModel(load_artifact(path))


def _settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "clicks_topic": CLICKS, "predictions_topic": PREDICTIONS, "dead_letter_topic": DEAD_LETTERS, "top_k": 5,
        "batch_retries": 2, "retry_backoff_s": 0.001, "expiry_interval_s": 3600.0, "catch_up_interval_s": 0.01,
        **overrides,
    }
    return WorkerSettings(**values)


def _value(session: str, item: str, at: float) -> bytes:
    return ClickEvent(session_id=session, item_id=item, timestamp=at).model_dump_json().encode()


def _record(session: str, item: str, offset: int, partition: int = 0, at: float | None = None) -> Record:
    return Record(session_key(session), _value(session, item, 1000.0 + offset if at is None else at), partition,
                  offset)


class FakeStore:
    """The sessions table as dicts; every write is logged in the shared ``log``."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.data: dict[tuple[int, bytes], bytes] = {}
        self.progress: dict[int, int] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get((partition, key))

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.log.append(("put", partition, key, value))
        if value is None:
            self.data.pop((partition, key), None)
        else:
            self.data[(partition, key)] = value

    def get_progress(self, partition: int) -> int | None:
        return self.progress.get(partition)

    def put_progress(self, partition: int, next_offset: int) -> None:
        self.log.append(("progress", partition, next_offset))
        self.progress[partition] = next_offset

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter([(key, value) for (p, key), value in list(self.data.items()) if p == partition])


class FakeSender:
    """Queues records; ``flush`` logs the topics it sends and returns completed futures."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.pending: list[tuple[str, bytes | None, bytes | None]] = []
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            on_delivered: Callable[[], None] | None = None) -> None:
        self.pending.append((topic, key, value))

    def discard(self) -> None:
        self.pending = []

    async def flush(self) -> list[asyncio.Future[Any]]:
        self.log.append(("flush", [topic for topic, _, _ in self.pending]))
        self.sent += self.pending
        self.pending = []
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    def on(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(key, value) for t, key, value in self.sent if t == topic]


class FakeGapReader:
    """The broker's copy of the clicks topic; logs every range read."""

    def __init__(self, records: list[Record] | None = None, error: Exception | None = None) -> None:
        self.records = records or []
        self.error = error
        self.reads: list[tuple[int, int, int]] = []

    async def read(self, topic: str, partition: int, first: int, stop: int) -> list[Record]:
        assert topic == CLICKS
        self.reads.append((partition, first, stop))
        if self.error is not None:
            raise self.error
        return [r for r in self.records if r.partition == partition and first <= r.offset < stop]


class FakePartitions:
    def __init__(self, assigned: set[int], highwater: dict[int, int] | None = None) -> None:
        self.assigned_now = assigned
        self.highwaters = highwater or {}
        self.rebalancing_now = False

    def assigned(self) -> set[int]:
        return set(self.assigned_now)

    def highwater(self, partition: int) -> int | None:
        return self.highwaters.get(partition)

    def rebalancing(self) -> bool:
        return self.rebalancing_now


class FakeHolder:
    def __init__(self, model: Any) -> None:
        self.model = model


class BrokenModel:
    """Every use fails (as a model whose arrays were corrupted would)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("model broken")


class World:
    """A BatchPath over fakes, with the shared write/flush log."""

    def __init__(self, model: Any, settings: WorkerSettings | None = None, gap_records: list[Record] | None = None,
                 gap_error: Exception | None = None, assigned: set[int] | None = None,
                 highwater: dict[int, int] | None = None) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.settings = settings or _settings()
        self.store = FakeStore(self.log)
        self.sender = FakeSender(self.log)
        self.stats = WorkerStats(online=OnlineEvaluator(100))
        self.gap_reader = FakeGapReader(gap_records, gap_error)
        self.partitions = FakePartitions({0, 1} if assigned is None else assigned, highwater)
        self.holder = FakeHolder(model)
        self.path = BatchPath(self.settings, self.holder, self.store, self.sender, self.stats, self.gap_reader,
                              self.partitions)

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(value or b"") for _, value in self.sender.on(DEAD_LETTERS)]

    def predictions(self) -> list[Prediction]:
        return [Prediction.model_validate_json(value or b"") for _, value in self.sender.on(PREDICTIONS)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    return _model(tmp_path_factory.mktemp("models"))


# ------------------------------------------------------------------------------------------------------ ingest


def test_ingest_classifies_bad_payloads_with_their_error_types_and_reasons() -> None:
    key = session_key("s1")
    good = _value("s1", "i3", 1000.0)
    event, error_type, reason = parse_click(good, key, 1000)
    assert event is not None and event.item_id == "i3" and (error_type, reason) == ("", "")
    assert parse_click(None, key, 1000) == (None, "invalid_payload", "message value is empty")
    assert parse_click(good, key, 10) == (None, "payload_too_large",
                                          f"message of {len(good)} bytes exceeds the limit of 10")
    _, error_type, reason = parse_click(b'{"session_id": "s1", ', key, 1000)
    assert error_type == "invalid_json" and reason.endswith("(1 error(s))")
    _, error_type, reason = parse_click(b'{"session_id": "s1", "timestamp": 1.0}', key, 1000)
    assert error_type == "validation" and reason.startswith("item_id: ")
    hostile = json.dumps({"session_id": "s1", "item_id": "i3", "timestamp": 1.0, "\u202e" + "x" * 200: 1}).encode()
    _, error_type, reason = parse_click(hostile, key, 1000)
    where = reason.split(": ")[0]
    assert error_type == "validation" and where == ascii("\u202e" + "x" * 79) and where.isascii()
    for wrong in (None, session_key("s2")):
        assert parse_click(good, wrong, 1000) == (
            None, "key_mismatch", "message key must be the session id (co-partitioning with the sessions table)")


def test_bad_clicks_are_dead_lettered_and_valid_ones_grouped_by_session_in_offset_order(model: ServingModel) -> None:
    world = World(model)
    records = [_record("a", "i1", 0), Record(session_key("a"), b"{", 0, 1), _record("b", "i2", 2),
               _record("a", "i3", 3), Record(session_key("zz"), _value("b", "i4", 1.0), 0, 4)]
    plans = asyncio.run(world.path.plan(records))
    clicks = world.path.ingest(plans)
    assert {s: [c.offset for c in cs] for s, cs in clicks.items()} == {"a": [0, 3], "b": [2]}
    assert world.stats.dead_letters == 2
    assert world.stats.dead_letters_by_type == {"invalid_json": 1, "key_mismatch": 1}
    assert world.stats.watermark(0) == 1003.0
    letters = world.sender.pending
    assert [(t, k) for t, k, _ in letters] == [(DEAD_LETTERS, session_key("a")), (DEAD_LETTERS, session_key("zz"))]
    first = DeadLetter.model_validate_json(letters[0][2] or b"")
    assert (first.error_type, first.topic, first.partition, first.offset, first.payload) == (
        "invalid_json", CLICKS, 0, 1, "{")


# -------------------------------------------------------------------------------------------------------- plan


def test_plan_skips_applied_offsets_and_fills_gaps_in_order(model: ServingModel) -> None:
    broker = [_record(f"s{n % 3}", f"i{n}", n) for n in range(20)]
    world = World(model, gap_records=broker, highwater={0: 20, 1: 9})
    world.store.progress[0] = 10
    delivered = [broker[8], broker[9], broker[10], broker[13], broker[15], broker[10],
                 _record("q", "i1", 4, partition=1), _record("q", "i2", 5, partition=1)]
    plans = asyncio.run(world.path.plan(delivered))
    by_partition = {plan.partition: plan for plan in plans}
    p0, p1 = by_partition[0], by_partition[1]
    assert [r.offset for r in p0.to_apply()] == [10, 11, 12, 13, 14, 15]
    assert [r.offset for r in p0.redelivered] == [8, 9] and (p0.start, p0.end) == (10, 16)
    assert world.gap_reader.reads == [(0, 11, 13), (0, 14, 15)]  # the missing ranges, in offset order
    assert (world.stats.gaps, world.stats.gap_records) == (2, 3)
    assert [r.offset for r in p1.to_apply()] == [4, 5] and (p1.start, p1.end) == (4, 6)  # no progress yet


def test_plan_reads_at_most_gap_read_max_records_and_ignores_a_progress_past_the_end(model: ServingModel) -> None:
    broker = [_record("s", f"i{n}", n) for n in range(20)]
    world = World(model, _settings(gap_read_max_records=3), gap_records=broker, highwater={0: 20, 1: 8})
    world.store.progress.update({0: 10, 1: 50})  # partition 1: the topic was recreated under the table
    plans = asyncio.run(world.path.plan([broker[15], _record("q", "i1", 6, partition=1)]))
    p0, p1 = sorted(plans, key=lambda plan: plan.partition)
    assert [r.offset for r in p0.to_apply()] == [10, 11, 12] and p0.end == 13
    assert world.gap_reader.reads == [(0, 10, 13)]
    assert (p1.start, p1.end) == (6, 7)


# ------------------------------------------------------------------------------- one batch: the order of writes


def test_predictions_are_acknowledged_before_states_and_progress_follows_its_states(model: ServingModel) -> None:
    world = World(model)
    records = [_record("a", "i1", 0), _record("b", "i2", 1), _record("a", "i3", 2), _record("b", "i4", 3),
               _record("c", "i5", 0, partition=1)]
    asyncio.run(world.path.handle_delivered(records))
    kinds = [entry[0] if entry[0] != "flush" else ("flush", tuple(sorted(set(entry[1])))) for entry in world.log]
    assert kinds == [("flush", (PREDICTIONS,)), "put", "put", "put", "progress", "progress", ("flush", ())]
    assert [entry[1:3] for entry in world.log[1:4]] == [(0, session_key("a")), (0, session_key("b")),
                                                        (1, session_key("c"))]
    assert world.store.progress == {0: 4, 1: 1}
    assert [(p.session_id, p.offset) for p in world.predictions()] == [("a", 0), ("b", 1), ("c", 0), ("a", 2),
                                                                      ("b", 3)]  # clicks step across sessions
    assert SessionState.decode(world.store.data[(0, session_key("a"))]).last_offset == 2
    assert (world.stats.events, world.stats.batches, world.stats.predictions) == (5, 1, 5)
    # Delivered again: below the progress, skipped (no prediction, no state write), counted as redelivered.
    asyncio.run(world.path.handle_delivered(records[:2]))
    assert len(world.predictions()) == 5 and world.stats.redelivered == 2 and world.store.progress == {0: 4, 1: 1}


def test_a_stored_state_whose_clicks_were_all_applied_is_sent_again_before_the_progress(model: ServingModel) -> None:
    world = World(model)
    clicks = [Click(ClickEvent(session_id="a", item_id=item, timestamp=1000.0 + n), 0, n)
              for n, item in enumerate(("i1", "i2"))]
    before = process_batch(model, {"a": clicks}, {}, 5, 50, 0.0)
    stored = before.states["a"].encode()
    world.store.data[(0, session_key("a"))] = stored  # in RocksDB, but the progress never made it
    asyncio.run(world.path.handle_delivered([_record("a", "i1", 0), _record("a", "i2", 1)]))
    assert world.predictions() == [] and world.stats.duplicates == 2
    writes = [entry for entry in world.log if entry[0] in ("put", "progress")]
    assert writes == [("put", 0, session_key("a"), stored), ("progress", 0, 2)]


def test_a_corrupt_stored_state_starts_the_session_afresh(model: ServingModel) -> None:
    world = World(model)
    world.store.data[(0, session_key("a"))] = b"not a state"
    clicks = {"a": [Click(ClickEvent(session_id="a", item_id="i1", timestamp=1.0), 0, 7)],
              "b": [Click(ClickEvent(session_id="b", item_id="i1", timestamp=1.0), 1, 3)]}
    partition_of, states = world.path.load_states(clicks)
    assert partition_of == {"a": 0, "b": 1} and states == {"a": None, "b": None}
    assert world.stats.corrupt_states == 1


# --------------------------------------------------------------------------------------- retry and dead letter


def test_a_failing_batch_is_retried_then_dead_lettered_with_progress_advanced() -> None:
    world = World(BrokenModel())
    records = [_record("a", "i1", 0), _record("b", "i2", 1), _record("a", "i3", 2)]
    asyncio.run(world.path.handle_delivered(records))
    assert world.stats.batch_failures == 3  # the first attempt and batch_retries=2 retries
    letters = world.dead_letters()
    assert [(d.offset, d.error_type, d.error) for d in letters] == [
        (n, "processing_failed", "RuntimeError: model broken") for n in range(3)]
    assert world.predictions() == [] and world.store.data == {}
    assert world.store.progress == {0: 3}  # dead-lettered clicks count as handled
    flushes_before_progress = [e for e in world.log[: world.log.index(("progress", 0, 3))] if e[0] == "flush"]
    assert flushes_before_progress[-1] == ("flush", [DEAD_LETTERS] * 3)  # dead letters out before the progress
    assert world.stats.events == 3 and world.stats.batches == 0


def test_a_batch_that_fails_once_is_applied_once_on_retry(model: ServingModel) -> None:
    class Flaky:
        calls = 0

        @property
        def model(self) -> Any:
            self.calls += 1
            return BrokenModel() if self.calls == 1 else model

    world = World(model)
    world.path.holder = Flaky()
    asyncio.run(world.path.handle_delivered([_record("a", "i1", 0), _record("a", "i2", 1)]))
    assert world.stats.batch_failures == 1 and world.dead_letters() == []
    assert [p.offset for p in world.predictions()] == [0, 1] and world.store.progress == {0: 2}


def test_a_batch_that_cannot_be_planned_is_dead_lettered_without_progress(model: ServingModel) -> None:
    world = World(model, gap_error=TimeoutError("broker gone"), highwater={0: 10})
    world.store.progress[0] = 0
    asyncio.run(world.path.handle_delivered([_record("a", "i1", 2)]))  # offsets 0..1 must be read first
    assert world.stats.batch_failures == 3 and len(world.gap_reader.reads) == 3
    assert [(d.offset, d.error) for d in world.dead_letters()] == [(2, "TimeoutError: broker gone")]
    assert world.store.progress == {0: 0}  # a later batch re-reads them


# ---------------------------------------------------------------------------------------------------- catch-up


def test_catch_up_reads_a_stalled_partition_up_to_its_high_water_mark(model: ServingModel) -> None:
    broker = [_record("a", f"i{n}", n) for n in range(5)]
    world = World(model, gap_records=broker, assigned={0}, highwater={0: 5})
    world.store.progress[0] = 2
    world.stats.note_assigned([0])

    async def run() -> None:
        await asyncio.sleep(0.02)  # longer than catch_up_interval_s without a delivery
        async with world.path.lock:  # the agent's batch holds the lock: catch-up waits for it
            task = asyncio.create_task(world.path.catch_up())
            await asyncio.sleep(0.01)
            assert world.gap_reader.reads == []
        await task

    asyncio.run(run())
    assert world.gap_reader.reads == [(0, 2, 5)]
    assert [p.offset for p in world.predictions()] == [2, 3, 4] and world.store.progress == {0: 5}


def test_catch_up_leaves_partitions_with_recent_deliveries_or_during_a_rebalance(model: ServingModel) -> None:
    world = World(model, gap_records=[_record("a", "i1", 0)], assigned={0, 1}, highwater={0: 1, 1: 1})
    world.store.progress.update({0: 0, 1: 0})
    world.stats.note_offset(0, 0)
    world.stats.note_assigned([1])
    world.partitions.rebalancing_now = True

    async def run() -> None:
        await asyncio.sleep(0.02)
        await world.path.catch_up()
        assert world.gap_reader.reads == []  # rebalancing
        world.partitions.rebalancing_now = False
        world.stats.note_offset(0, 0)
        await world.path.catch_up()

    asyncio.run(run())
    assert world.gap_reader.reads == [(1, 0, 1)]  # partition 0 had a click delivered just now


def test_a_failing_catch_up_stops_until_the_next_tick(model: ServingModel) -> None:
    world = World(model, gap_error=OSError("unreachable"), assigned={0}, highwater={0: 3})
    world.store.progress[0] = 0
    world.stats.note_assigned([0])

    async def run() -> None:
        await asyncio.sleep(0.02)
        await world.path.catch_up()

    asyncio.run(run())
    assert len(world.gap_reader.reads) == 3 and world.dead_letters() == [] and world.store.progress == {0: 0}


# ------------------------------------------------------------------------------------------------------ expiry


def test_expiry_drops_idle_sessions_past_the_ttl_by_the_partition_watermark(model: ServingModel) -> None:
    world = World(model, _settings(session_ttl_s=100.0))

    def state_at(session: str, at: float) -> bytes:
        event = ClickEvent(session_id=session, item_id="i1", timestamp=at)
        return process_batch(model, {session: [Click(event, 0, 0)]}, {}, 5, 50, 0.0).states[session].encode()

    world.store.data.update({
        (0, b"fresh"): state_at("fresh", 4950.0), (0, b"idle"): state_at("idle", 4899.0),
        (0, b"corrupt"): b"junk", (1, b"other"): state_at("other", 0.0),  # partition 1: no watermark yet
    })
    world.stats.note_event_time(0, 5000.0)
    world.path.expire_sessions({0, 1})
    assert sorted(world.store.data) == [(0, b"fresh"), (1, b"other")]
    assert world.stats.expired == 2


def test_expiry_runs_within_a_batch_after_its_progress_when_due(model: ServingModel) -> None:
    world = World(model, _settings(session_ttl_s=100.0, expiry_interval_s=1e-9))
    world.store.data[(0, session_key("old"))] = b"junk"
    asyncio.run(world.path.handle_delivered([_record("new", "i1", 0, at=5000.0)]))
    writes = [entry[:3] for entry in world.log if entry[0] in ("put", "progress")]
    assert writes == [("put", 0, session_key("new")), ("progress", 0, 1), ("put", 0, session_key("old"))]
    assert world.store.data[(0, session_key("new"))] and (0, session_key("old")) not in world.store.data


# -------------------------------------------------------------------------------------------------------- web


def test_consumer_lags_per_assigned_partition() -> None:
    stats = WorkerStats()
    stats.note_offset(0, 6)
    partitions = FakePartitions({0, 1, 2}, {0: 10, 1: 3})
    assert consumer_lags(partitions, stats) == {0: 3, 1: 3}  # partition 2: no high-water mark yet

    class NotStarted(FakePartitions):
        def assigned(self) -> set[int]:
            raise RuntimeError("consumer not started")

    assert consumer_lags(NotStarted(set()), stats) == {}


# ---------------------------------------------------------------------------------------------------- pipeline


class HeldSender(FakeSender):
    """Predictions are acknowledged only when the test says so (``acknowledge``), in flush order."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__(log)
        self.held: list[asyncio.Future[Any]] = []

    async def flush(self) -> list[asyncio.Future[Any]]:
        topics = {topic for topic, _, _ in self.pending}
        done = await super().flush()
        if PREDICTIONS not in topics:
            return done
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append(held)
        return [held]

    def acknowledge(self, error: Exception | None = None) -> None:
        held = self.held.pop(0)
        if error is None:
            held.set_result(None)
        else:
            held.set_exception(error)


class PipelinedWorld(World):
    def __init__(self, model: ServingModel, depth: int = 2) -> None:
        super().__init__(model, _settings(pipeline_depth=depth))
        self.sender: HeldSender = HeldSender(self.log)
        self.path.sender = self.sender


def _pipelined_world(model: ServingModel, depth: int = 2) -> PipelinedWorld:
    return PipelinedWorld(model, depth)


def _batches() -> list[list[Record]]:
    """Three batches over the same sessions (each batch's states depend on the one before)."""
    return [[_record(s, f"i{(n * 7 + i) % N_ITEMS}", 3 * n + i) for i, s in enumerate(("a", "b", "a"))]
            for n in range(3)]


def _sequential(model: ServingModel) -> World:
    world = World(model)
    for batch in _batches():
        asyncio.run(world.path.handle_delivered(batch))
    return world


def _stable_predictions(world: World) -> list[tuple[str, int | None, list[str], list[float]]]:
    return [(p.session_id, p.offset, p.items, p.scores) for p in world.predictions()]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_next_batch_is_processed_while_the_previous_waits_for_its_acknowledgement(model: ServingModel) -> None:
    world = _pipelined_world(model)
    first, second, third = _batches()

    async def run() -> None:
        done1 = await world.path.deliver(first)
        assert not done1.done() and world.store.data == {}  # sent, not acknowledged: nothing written
        done2 = await world.path.deliver(second)  # processed from the first batch's states, held in memory
        assert len(world.predictions()) == 6 and world.store.data == {} and world.store.progress == {}
        third_delivered = asyncio.ensure_future(world.path.deliver(third))
        await _settle()
        assert not third_delivered.done()  # two batches wait for their acknowledgement: the third waits too
        world.sender.acknowledge()  # the first batch's predictions
        await _settle()
        assert done1.done() and not done2.done() and world.store.progress == {0: 3}
        done3 = await third_delivered
        world.sender.acknowledge()
        world.sender.acknowledge()
        await asyncio.gather(done2, done3)

    asyncio.run(run())
    sequential = _sequential(model)
    assert _stable_predictions(world) == _stable_predictions(sequential)
    assert world.store.data == sequential.store.data and world.store.progress == sequential.store.progress == {0: 9}
    writes = [entry for entry in world.log if entry[0] in ("put", "progress")]
    assert writes == [entry for entry in sequential.log if entry[0] in ("put", "progress")]  # same order
    assert world.path._pending_states == {} and world.path._pending_progress == {}
    assert (world.stats.batches, world.stats.events, world.stats.predictions) == (3, 9, 9)


def test_a_batch_whose_acknowledgement_fails_is_applied_again_with_the_batches_after_it(model: ServingModel) -> None:
    world = _pipelined_world(model)
    first, second, third = _batches()

    async def run() -> None:
        done1 = await world.path.deliver(first)
        done2 = await world.path.deliver(second)
        world.sender.acknowledge(OSError("broker gone"))  # the first batch's predictions never made it
        await _settle()
        assert world.store.data == {} and world.store.progress == {}  # neither tail wrote anything
        world.sender.acknowledge()  # (the second batch's, sent on the first one's states: written by no one)
        delivered3 = asyncio.ensure_future(world.path.deliver(third))  # after the recovery applied both again
        while not (done1.done() and done2.done() and delivered3.done() and delivered3.result().done()):
            if world.sender.held:
                world.sender.acknowledge()
            await asyncio.sleep(0.001)

    asyncio.run(run())
    sequential = _sequential(model)
    assert world.store.data.keys() == sequential.store.data.keys() and world.store.progress == {0: 9}
    for key, raw in world.store.data.items():  # (batches 1 and 2 were applied again as one: float noise)
        got, want = SessionState.decode(raw), SessionState.decode(sequential.store.data[key])
        assert (got.ring, got.last_offset, got.event_count) == (want.ring, want.last_offset, want.event_count)
        np.testing.assert_allclose(got.model_state, want.model_state, atol=1e-5)
    assert world.stats.batch_failures == 1 and world.dead_letters() == []
    again = [(p.session_id, p.offset, p.items) for p in world.predictions()]
    assert sorted(again[:6]) == sorted(again[6:12])  # the first two batches' predictions, sent again (as one)
    assert again[12:] == [(p.session_id, p.offset, p.items) for p in sequential.predictions()][6:]


def test_expiry_in_a_tail_spares_sessions_a_later_batch_already_moved_on(model: ServingModel) -> None:
    world = _pipelined_world(model)
    world.path.settings = _settings(pipeline_depth=2, session_ttl_s=100.0, expiry_interval_s=1e-9)
    world.store.data[(0, session_key("old"))] = b"junk"  # unreadable: expired by any sweep

    async def run() -> None:
        done1 = await world.path.deliver([_record("a", "i1", 0, at=5000.0)])
        done2 = await world.path.deliver([_record("old", "i2", 1, at=5000.0)])  # "old" moves on in batch 2
        world.sender.acknowledge()
        await done1  # batch 1's tail sweeps: "old" is spared, batch 2 is about to write it
        assert world.store.data[(0, session_key("old"))] == b"junk"
        world.sender.acknowledge()
        await done2

    asyncio.run(run())
    assert SessionState.decode(world.store.data[(0, session_key("old"))]).event_count == 1
