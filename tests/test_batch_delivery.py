"""Batch delivery in the Faust consumer (stream_worker/transport.py) without a broker: what is handed to the batch
handler, and how the bulk acknowledgement feeds Faust's own offset-commit bookkeeping and wait_empty."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream_worker.app import make_faust_app
from stream_worker.record import Record
from stream_worker.settings import WorkerSettings
from stream_worker.transport import Consumer

TOPIC = "clicks"


def _consumer(tmp_path: Path) -> Consumer:
    app = make_faust_app(WorkerSettings(data_dir=tmp_path, clicks_topic=TOPIC, bootstrap_servers="127.0.0.1:1"))
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    app.topics._acking_topics.add(TOPIC)  # type: ignore[attr-defined]  # (the conductor does this when it subscribes the agent's topic)
    return consumer


def _fetched(partition: int, offsets: Sequence[int]) -> tuple[TP, list[Any]]:
    return TP(TOPIC, partition), [SimpleNamespace(key=b"k", value=f"v{o}".encode(), partition=partition, offset=o,
                                                  timestamp=1_000_000 + o) for o in offsets]


class Handler:
    """Records what it is handed; each batch completes when the test says so."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[Record], list[int | None], float]] = []
        self.completions: list[asyncio.Future[None]] = []

    async def __call__(self, records: Sequence[Record], create_times: Sequence[int | None],
                       fetched_at: float) -> asyncio.Future[None]:
        self.batches.append((list(records), list(create_times), fetched_at))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.completions.append(done)
        return done


def test_a_fetch_is_handed_over_as_one_list_and_acknowledged_once_handled(tmp_path: Path) -> None:
    async def run() -> None:
        consumer = _consumer(tmp_path)
        handler = Handler()
        tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
        await consumer._deliver_batch(handler, [_fetched(0, [0, 1, 2]), _fetched(1, [5, 6])], 123.0, 0)
        records, create_times, fetched_at = handler.batches[0]
        assert [(r.partition, r.offset, r.value) for r in records] == [
            (0, 0, b"v0"), (0, 1, b"v1"), (0, 2, b"v2"), (1, 5, b"v5"), (1, 6, b"v6")]
        assert create_times == [1_000_000, 1_000_001, 1_000_002, 1_000_005, 1_000_006] and fetched_at == 123.0
        assert len(consumer._unacked_messages) == 1  # in flight: wait_empty (rebalance, shutdown) waits for it
        assert consumer._new_offset(tp0) is None and (consumer._read_offset[tp0], consumer._read_offset[tp1]) == (2, 6)
        handler.completions[0].set_result(None)
        await asyncio.sleep(0)
        assert len(consumer._unacked_messages) == 0 and consumer._n_acked == 5
        assert (consumer._new_offset(tp0), consumer._new_offset(tp1)) == (3, 7)  # what Faust's commit commits

    asyncio.run(run())


def test_offsets_the_fetch_skipped_are_a_gap_and_older_ones_are_dropped(tmp_path: Path) -> None:
    async def run() -> None:
        consumer = _consumer(tmp_path)
        handler = Handler()
        tp = TP(TOPIC, 0)
        await consumer._deliver_batch(handler, [_fetched(0, [0, 1, 2, 3])], 1.0, 0)
        handler.completions[0].set_result(None)
        await consumer._deliver_batch(handler, [_fetched(0, [2, 3, 6, 7, 9])], 2.0, 0)  # 2 below the read offset
        assert [r.offset for r in handler.batches[1][0]] == [3, 6, 7, 9]  # (Faust's rule: >= the read offset)
        handler.completions[1].set_result(None)
        await asyncio.sleep(0)
        assert consumer._new_offset(tp) == 10  # 4..5 and 8 skipped by the fetch: committable, as in Faust

    asyncio.run(run())


def test_nothing_is_handed_over_once_a_rebalance_started(tmp_path: Path) -> None:
    async def run() -> None:
        consumer = _consumer(tmp_path)
        handler = Handler()
        consumer.app.consumer_generation_id = 2
        await consumer._deliver_batch(handler, [_fetched(0, [0, 1])], 1.0, 1)  # fetched in generation 1
        consumer.stop_flow()
        await consumer._deliver_batch(handler, [_fetched(0, [0, 1])], 1.0, 2)
        assert handler.batches == [] and consumer._read_offset[TP(TOPIC, 0)] is None
        assert len(consumer._unacked_messages) == 0

    asyncio.run(run())


def test_a_failing_handler_does_not_stop_the_consumer_and_its_batch_is_acknowledged(tmp_path: Path) -> None:
    async def failing(records: Sequence[Record], create_times: Sequence[int | None], fetched_at: float) -> None:
        raise RuntimeError("bug")

    async def run() -> None:
        consumer = _consumer(tmp_path)
        await consumer._deliver_batch(failing, [_fetched(0, [0, 1])], 1.0, 0)
        assert len(consumer._unacked_messages) == 0 and consumer._new_offset(TP(TOPIC, 0)) == 2

    asyncio.run(run())
