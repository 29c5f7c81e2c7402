"""Faust's aiokafka transport with a configurable fetch wait, end offsets verified by a fetch (tansu bug), and
batch delivery: the records of a registered topic go to one async handler per fetch instead of one Faust event
(task, queue hop, ack) per record."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import aiokafka
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from stream_worker.record import Record

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Record], Sequence[int | None], float], Awaitable[Awaitable[Any] | None]]
"""``handler(records, create_times_ms, fetched_at)``: the fetched records of one topic (partitions interleaved, each
partition in offset order), their Kafka timestamps (ms, None when absent) and when the fetch returned
(``time.time()``). Returns once the records are taken over; the awaitable it returns (or None: already done)
completes once they are handled, and only then are they acknowledged (committable)."""


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Consumer thread that (1) waits at most ``fetch_max_wait_ms`` for a fetch (Faust hard-codes 1500 ms) and
    (2) confirms ListOffsets end offsets by reading the last records.

    Tansu answers ListOffsets(LATEST) with the first offset of the last record batch + 1, so table recovery
    would stop early or fail the consistency check on every warm restart. On Apache Kafka the check only
    re-reads one record per partition.
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 1500))
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = dict(await super()._highwaters(partitions))
        return await self._verified_ends(reported)

    async def _verified_ends(self, reported: dict[TP, int]) -> dict[TP, int]:
        probe_tps = [tp for tp, end in reported.items() if end and end > 0]
        if not probe_tps:
            return reported
        conf = self.app.conf
        transport = cast(Any, self.transport)
        probe = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )
        await probe.start()
        try:
            probe.assign(probe_tps)
            for tp in probe_tps:
                probe.seek(tp, reported[tp] - 1)
            ends = dict(reported)
            pending = set(probe_tps)
            for _ in range(50):  # each round reads what is there; the fetch high-water mark is right
                batches = await probe.getmany(*pending, timeout_ms=100)
                for tp, records in batches.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                for tp in list(pending):
                    highwater = probe.highwater(tp)
                    if highwater is not None and await probe.position(tp) >= highwater:
                        ends[tp] = max(ends[tp], highwater)
                        pending.discard(tp)
                if not pending:
                    break
            corrected = {tp: (reported[tp], ends[tp]) for tp in probe_tps if ends[tp] != reported[tp]}
            if corrected:
                log.info("end offsets corrected by fetch (reported, real): %s", corrected)
            return ends
        finally:
            await probe.stop()


class _InFlightBatch:
    """Stands for one delivered batch in Faust's set of unacknowledged messages, so ``Consumer.wait_empty`` (before a
    rebalance revokes partitions, and at shutdown) waits until the batch is handled, as it waits for events."""

    __slots__ = ("acked", "refcount", "size", "__weakref__")

    def __init__(self, size: int) -> None:
        self.acked = False
        self.refcount = 1
        self.size = size

    def __repr__(self) -> str:
        return f"<batch of {self.size} records>"


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer using ConsumerThread, with batch delivery for the topics in ``app.batch_handlers``.

    Faust's ``_drain_messages`` awaits ``wait_first(callback(message), ...)`` for every record: four tasks, the
    conductor, the topic channel's queue, an event object, the stream and one ack each. For a topic with a batch
    handler, the records of a fetch are handed over as one list and acknowledged in bulk once the handler's
    completion says they are handled; the bookkeeping is Faust's own (read offsets and gaps, ``_acked`` /
    ``_acked_index`` / ``_n_acked`` for the offset commits, the unacked set for ``wait_empty``). Every other topic
    (changelogs during recovery, model updates) goes through Faust's callback unchanged.
    """

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _batch_handlers(self) -> dict[str, BatchHandler]:
        return cast(dict[str, BatchHandler], getattr(self.app, "batch_handlers", None) or {})

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - driven by a live broker
        if not self._batch_handlers():
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                try:
                    await self._drain_once()
                finally:
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise

    async def _drain_once(self) -> None:
        """One fetch: what ``getmany`` + the per-message loop of Faust's ``_drain_messages`` do, per batch."""
        handlers = self._batch_handlers()
        records, active = await self._wait_next_records(1.0)
        fetched_at = time.time()
        generation_id = self.app.consumer_generation_id
        await self.sleep(0)
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as ex:  # noqa: BLE001 - as Faust's getmany
                log.warning("exception performing seek when flow not active %s", ex)
            return
        batched: dict[str, list[tuple[TP, list[Any]]]] = {}
        others: dict[TP, list[Any]] = {}
        for tp, tp_records in records.items():
            if not tp_records or (active is not None and tp not in active and tp not in self._buffered_partitions):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in handlers:
                batched.setdefault(tp.topic, []).append((tp, tp_records))
            else:
                others[tp] = tp_records
        if others:
            await self._deliver_one_by_one(others, generation_id)
        for topic, per_tp in batched.items():
            await self._deliver_batch(handlers[topic], per_tp, fetched_at, generation_id)

    async def _deliver_one_by_one(self, records: Mapping[TP, list[Any]], generation_id: int) -> None:
        """Faust's own path: each record through the conductor callback, in Faust's round-robin order."""
        callback = self.callback
        to_message = self._to_message
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            since_yield += 1
            if since_yield > 100:
                await asyncio.sleep(0)
                since_yield = 0
            message = to_message(tp, record)
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                await self._maybe_commit_every()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                read_offset[tp] = offset

    async def _maybe_commit_every(self) -> None:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    async def _deliver_batch(self, handler: BatchHandler, per_tp: list[tuple[TP, list[Any]]], fetched_at: float,
                             generation_id: int) -> None:
        """Hand one topic's fetched records to its handler; acknowledge them in bulk once it says they are handled.

        The same rules as Faust's per-message loop: records below the partition's read offset are dropped, offsets
        the fetch skipped become a gap (committable, else the commits would stop there; the batch path reads
        such offsets from the broker itself), the read offset moves to the last record handed over, and nothing
        is handed over once a rebalance started (flow stopped or a new generation): those records are fetched
        again after it."""
        read_offset = self._read_offset
        acks_enabled = self.app.topics.acks_enabled_for(per_tp[0][0].topic)
        records: list[Record] = []
        create_times: list[int | None] = []
        offsets: dict[TP, list[int]] = {}
        for tp, tp_records in per_tp:
            r_offset = read_offset[tp]
            kept = [r for r in tp_records if r_offset is None or r.offset >= r_offset]
            if not kept:
                continue
            expected = r_offset + 1 if r_offset else None
            for record in kept:
                if expected is not None and record.offset > expected and acks_enabled:
                    # (_add_gap's end is inclusive; Faust's loop passes the offset itself, which then counts
                    # twice and holds the commit back for a round)
                    await self._add_gap(tp, expected, record.offset - 1)
                expected = record.offset + 1
            offsets[tp] = [r.offset for r in kept]
            records.extend(Record(r.key, r.value, r.partition, r.offset) for r in kept)
            create_times.extend(r.timestamp for r in kept)
        if not records:
            return
        await self._maybe_commit_every()
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            return
        now = time.monotonic()
        inbound = self.app.monitor.stream_inbound_time
        for tp, tp_offsets in offsets.items():
            read_offset[tp] = tp_offsets[-1]
            inbound[tp] = now  # (Faust's livelock check: this partition's stream is processing)
        token = _InFlightBatch(len(records))
        self._unacked_messages.add(token)  # type: ignore[arg-type]  # (a stand-in: wait_empty reads .acked)
        # Shielded: a cancelled fetcher (shutdown, recovery) must not abandon a batch half-applied; the batch
        # finishes and is acknowledged, and wait_empty waits for it.
        task = asyncio.ensure_future(handler(records, create_times, fetched_at))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._ack_when_handled(t, token, offsets, acks_enabled))
            raise
        except Exception:  # noqa: BLE001 - the handler retries and dead-letters itself; this is a bug, not data
            log.exception("batch handler of %s failed; its %d records are left to the table's progress (the next "
                          "batch reads what was not applied from the broker)", per_tp[0][0].topic, len(records))
            self._ack_batch(token, offsets, acks_enabled)
            return
        self._ack_when_handled(task, token, offsets, acks_enabled)

    def _ack_when_handled(self, task: asyncio.Future[Any], token: _InFlightBatch, offsets: dict[TP, list[int]],
                          acks_enabled: bool) -> None:
        """Acknowledge once the completion the handler returned is done (at once if it returned None)."""
        done = None if task.cancelled() or task.exception() is not None else task.result()
        if done is None:
            self._ack_batch(token, offsets, acks_enabled)
            return
        completion = asyncio.ensure_future(done)
        completion.add_done_callback(lambda f: self._ack_completed(f, token, offsets, acks_enabled))

    def _ack_completed(self, completion: asyncio.Future[Any], token: _InFlightBatch, offsets: dict[TP, list[int]],
                       acks_enabled: bool) -> None:
        if completion.cancelled() or completion.exception() is not None:
            log.error("a batch of %d records ended without being handled (%s); acknowledged anyway: the table's "
                      "progress, not the committed offsets, decides what is applied", token.size,
                      "cancelled" if completion.cancelled() else repr(completion.exception()))
        self._ack_batch(token, offsets, acks_enabled)

    def _ack_batch(self, token: _InFlightBatch, offsets: dict[TP, list[int]], acks_enabled: bool) -> None:
        """``Consumer.ack`` for every record of a batch at once (same bookkeeping, one pass per partition)."""
        with ack_lock:
            if token.acked:
                return
            token.acked = True
            token.refcount = 0
            self._unacked_messages.discard(token)  # type: ignore[arg-type]
            if acks_enabled:
                for tp, tp_offsets in offsets.items():
                    committed = self._committed_offset[tp]
                    acked_index = self._acked_index[tp]
                    new = [o for o in tp_offsets if (committed is None or o >= committed) and o not in acked_index]
                    if new:
                        acked_index.update(new)
                        self._acked[tp].extend(new)
                        self._n_acked += len(new)
            notify(self._waiting_for_ack)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport using Consumer."""

    Consumer = Consumer
