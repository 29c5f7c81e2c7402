"""The batch path: delivered clicks -> plan -> ingest -> load states -> process -> publish -> store, with retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas import DeadLetter
from stream_worker.ingest import parse_click, session_key
from stream_worker.processor import BatchOutcome, Click, process_batch
from stream_worker.progress import PartitionPlan, plan_partition
from stream_worker.record import Record
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState, StateDecodeError, last_timestamp_of
from stream_worker.settings import WorkerSettings
from stream_worker.stats import STAGES, WorkerStats

log = logging.getLogger(__name__)


class Store(Protocol):
    """The sessions table per partition (stream_worker/session_store.py): states, progress, changelog queue."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...

    def get_progress(self, partition: int) -> int | None: ...

    def put_progress(self, partition: int, next_offset: int) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


class Sender(Protocol):
    """Records queued per topic-partition and sent by ``flush`` (stream_worker/batch_sender.py)."""

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            on_delivered: Callable[[], None] | None = None) -> None: ...

    def discard(self) -> None: ...

    async def flush(self) -> list[asyncio.Future[Any]]: ...


class GapSource(Protocol):
    """Reads offset ranges of a partition from the broker (stream_worker/gap_reader.py)."""

    async def read(self, topic: str, partition: int, first: int, stop: int) -> list[Record]: ...


class Partitions(Protocol):
    """The clicks topic's partitions as this worker's group consumer sees them."""

    def assigned(self) -> set[int]: ...

    def highwater(self, partition: int) -> int | None: ...

    def rebalancing(self) -> bool: ...


class Holder(Protocol):
    """Holds the model served now (stream_worker/model_holder.py)."""

    @property
    def model(self) -> ServingModel: ...


Planner = Callable[[], Awaitable[list[PartitionPlan]]]


@dataclass
class _Batch:
    """A batch in the pipeline: its predictions sent, its states and progress not written yet."""

    seq: int
    records: list[Record]  # as delivered (applied again from the stored progress if the pipeline breaks)
    create_times: np.ndarray | None  # (n,) Kafka CreateTime of the delivered records, seconds
    done: asyncio.Future[None]  # set once its states and progress are written (or it was applied again)
    state_keys: list[tuple[int, bytes]] = field(default_factory=list)
    progress_partitions: list[int] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)  # of its plans (expiry sweeps them)
    tail: asyncio.Task[bool] | None = None


def _seconds(create_times_ms: Sequence[int | None] | None) -> np.ndarray | None:
    if create_times_ms is None:
        return None
    try:
        return np.array(create_times_ms, dtype=np.float64) / 1000.0
    except TypeError:  # a record without a timestamp
        values = np.array([np.nan if t is None else t for t in create_times_ms], dtype=np.float64) / 1000.0
        return values[~np.isnan(values)]


def _completed() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class BatchPath:
    """Applies batches of clicks to the sessions table; the agent and the catch-up timer share it (and its lock).

    One attempt at a batch (``handle``) runs the stages in this order: ``plan`` (progress, gaps read from the
    broker), ``ingest`` (valid clicks; the rest to the dead-letter topic), ``load_states``, ``process`` (pure),
    ``publish`` (predictions acknowledged), ``store_states`` (states, then progress, then the changelog flush).
    ``handle_or_dead_letter`` retries a failing batch and finally dead-letters it.

    ``deliver`` (the transport's batch handler) pipelines the same stages: a batch is planned, processed and its
    predictions sent, then it returns, and its *tail* (wait for the predictions' acknowledgement, then write the
    states, then the progress) runs while the next batch is processed. The next batch reads the states and
    progress of the batches still in the pipeline from memory (``_pending_states``, ``_pending_progress``: the
    encoded bytes the tail will write), so it sees exactly what the sequential path would have seen. Tails run in
    batch order, each after the previous one, so a state is never written before the predictions of every batch
    up to its own are acknowledged, and a progress never before its states. At most ``pipeline_depth`` batches
    wait for their acknowledgement at once. If a tail fails (e.g. the broker is gone), no later tail writes
    anything: the pipeline is drained and its batches applied again the sequential way, from the stored progress
    (``_recover``), with retries and dead letters as usual.
    """

    def __init__(self, settings: WorkerSettings, holder: Holder, store: Store, sender: Sender, stats: WorkerStats,
                 gap_reader: GapSource, partitions: Partitions) -> None:
        self.settings = settings
        self.holder = holder
        self.store = store
        self.sender = sender
        self.stats = stats
        self.gap_reader = gap_reader
        self.partitions = partitions
        self.lock = asyncio.Lock()  # batches of the agent and the catch-up timer apply clicks one at a time
        self._pipeline: deque[_Batch] = deque()  # published, not stored yet; oldest first
        self._pending_states: dict[tuple[int, bytes], tuple[int, bytes]] = {}  # (partition, key) -> (seq, state)
        self._pending_progress: dict[int, tuple[int, int]] = {}  # partition -> (seq, next offset)
        self._seq = 0
        self._broken = False  # a tail failed: the batches in the pipeline must be applied again
        self._recovery: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------ entry points (agent, timer)

    async def handle_delivered(self, delivered: Sequence[Record], create_times_ms: Sequence[int | None] | None = None,
                               fetched_at: float | None = None) -> None:
        """A batch the group consumer delivered (the clicks agent); returns once it is applied and stored."""
        await (await self.deliver(delivered, create_times_ms, fetched_at))

    async def deliver(self, delivered: Sequence[Record], create_times_ms: Sequence[int | None] | None = None,
                      fetched_at: float | None = None) -> asyncio.Future[None]:
        """A fetched batch (the transport's batch handler): returns once its predictions are sent, with a future
        that completes once they are acknowledged and its states and progress are written (the transport
        acknowledges the records to Faust then). ``create_times_ms``: the records' Kafka timestamps, for the
        latency histograms; ``fetched_at``: when the fetch returned (time.time())."""
        create_times = _seconds(create_times_ms)
        if fetched_at is not None:
            self.stats.note_latency("fetched", fetched_at, create_times)
        assigned = self.partitions.assigned()
        records = []
        for record in delivered:
            self.stats.note_offset(record.partition, record.offset)
            if record.partition in assigned:
                records.append(record)
            else:  # delivered after its partition moved to another worker (a stale fetch): that worker applies it
                self.stats.foreign += 1
        async with self.lock:
            await self._make_room()
            self.stats.note_latency("started", time.time(), create_times)
            try:
                done = await self._front(records, create_times)
            except Exception:  # noqa: BLE001 - retried the sequential way below
                self.stats.batch_failures += 1
                log.exception("batch of %d clicks failed (attempt 1)", len(records))
                self.sender.discard()
                await self._drain()
                await asyncio.sleep(self.settings.retry_backoff_s)
                await self.handle_or_dead_letter(records, lambda: self.plan(records), first_attempt=1)
                done = _completed()
        self.stats.events += len(delivered)
        return done

    async def drain(self) -> None:
        """Wait until every batch in the pipeline is stored (or applied again after a failure)."""
        async with self.lock:
            await self._drain()

    async def catch_up(self) -> None:
        """A partition behind its high-water mark with no click delivered for a whole interval (its consumer
        stopped short) is read from the broker up to that mark, a bounded chunk at a time."""
        settings = self.settings
        for partition in sorted(self.partitions.assigned()):
            while not self.partitions.rebalancing() and partition in self.partitions.assigned():
                highwater = self.partitions.highwater(partition)
                async with self.lock:
                    await self._drain()
                    progress = self.progress_of(partition)
                    if (highwater is None or progress is None or progress >= highwater
                            or self.stats.delivered_within(partition, settings.catch_up_interval_s)):
                        break
                    log.warning("%s[%d]: nothing delivered for %.0f s while offsets %d..%d are not applied",
                                settings.clicks_topic, partition, settings.catch_up_interval_s, progress,
                                highwater - 1)
                    stalled = PartitionPlan(partition, progress, end=int(highwater))

                    async def plan(stalled: PartitionPlan = stalled) -> list[PartitionPlan]:
                        await self.fill_gaps(stalled)
                        return [stalled]

                    await self.handle_or_dead_letter([], plan)
                    if (self.store.get_progress(partition) or 0) <= progress:
                        break  # failed (e.g. the broker is gone): the next tick tries again

    # ---------------------------------------------------------------------------------------- retry/dead-letter

    async def handle_or_dead_letter(self, records: Sequence[Record], plan: Planner, first_attempt: int = 0) -> None:
        """A failing batch is retried with backoff (the broker may be back); if it keeps failing, its clicks
        go to the dead-letter topic with the error, so the worker never dies on a batch and loses nothing.
        ``first_attempt``: attempts already made (by the pipelined path)."""
        settings, sender = self.settings, self.sender
        error: Exception | None = None
        plans: list[PartitionPlan] | None = None
        for attempt in range(first_attempt, settings.batch_retries + 1):
            sender.discard()
            try:
                plans = await plan()
                await self.handle(plans)
                return
            except Exception as failure:  # noqa: BLE001 - one bad batch must not stop the worker
                error = failure
                self.stats.batch_failures += 1
                log.exception("batch of %d clicks failed (attempt %d)", len(records), attempt + 1)
                await asyncio.sleep(min(settings.retry_backoff_s * 2**attempt, 30.0))
        sender.discard()
        failed = [r for p in plans for r in p.to_apply()] if plans is not None else records
        for record in failed:
            self.dead_letter(record, "processing_failed", f"{type(error).__name__}: {error}")
        await asyncio.gather(*await sender.flush())
        for p in plans or ():  # dead-lettered clicks count as handled; without a plan, a later batch re-reads them
            self.store.put_progress(p.partition, p.end)
        await sender.flush()

    def dead_letter(self, record: Record, error_type: str, reason: str) -> None:
        letter = DeadLetter.from_raw(
            raw=record.value if isinstance(record.value, bytes) else b"", error=reason, error_type=error_type,
            topic=self.settings.clicks_topic, partition=record.partition, offset=record.offset,
            received_at=time.time(),
        )
        self.stats.dead_letters += 1
        self.stats.dead_letters_by_type[error_type] = self.stats.dead_letters_by_type.get(error_type, 0) + 1
        self.sender.add(self.settings.dead_letter_topic, record.key, letter.model_dump_json().encode())

    # ------------------------------------------------------------------------------------------------ plan

    async def plan(self, records: Sequence[Record]) -> list[PartitionPlan]:
        """Per partition: the delivered clicks not applied yet, with the offsets the consumer skipped read from
        the broker, so they are applied in offset order, each once (see stream_worker/progress.py)."""
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        plans = [plan_partition(p, rs, self.progress_of(p)) for p, rs in by_partition.items()]
        for plan in plans:
            await self.fill_gaps(plan)
        return plans

    def progress_of(self, partition: int) -> int | None:
        pending = self._pending_progress.get(partition)
        if pending is not None:  # a batch in the pipeline moves it there
            return pending[1]
        progress = self.store.get_progress(partition)
        highwater = self.partitions.highwater(partition)
        if progress is not None and highwater is not None and progress > highwater:
            log.error("%s[%d]: the table's progress %d is past the end of the partition (%d): the topic was "
                      "recreated? Starting again from the delivered clicks", self.settings.clicks_topic, partition,
                      progress, highwater)
            return None
        return progress

    async def fill_gaps(self, plan: PartitionPlan) -> None:
        plan.truncate(self.settings.gap_read_max_records)
        for first, stop in plan.missing():
            log.warning("%s[%d]: offsets %d..%d were not delivered by the consumer; reading them from the broker",
                        self.settings.clicks_topic, plan.partition, first, stop - 1)
            fetched = await self.gap_reader.read(self.settings.clicks_topic, plan.partition, first, stop)
            plan.fill(fetched)
            self.stats.gaps += 1
            self.stats.gap_records += len(fetched)

    # ---------------------------------------------------------------------------------- one attempt at a batch

    async def handle(self, plans: Sequence[PartitionPlan]) -> None:
        """Apply planned clicks, one stage after the other (the sequential path: retries, catch-up); ``marks`` time
        the stages (stream_worker/stats.py STAGES)."""
        received_at = time.time()
        marks = [time.perf_counter()]
        model = self.holder.model
        clicks = self.ingest(plans)
        marks.append(time.perf_counter())
        partition_of, states = self.load_states(clicks)
        marks.append(time.perf_counter())
        outcome = self.process(model, clicks, states, received_at)
        marks.append(time.perf_counter())
        deliveries = await self.publish_soon(outcome)
        marks.append(time.perf_counter())
        await asyncio.gather(*deliveries)  # predictions are out before the state that follows them
        marks.append(time.perf_counter())
        await self.store_states(outcome, states, partition_of, plans)
        marks.append(time.perf_counter())
        seconds = {stage: end - start for stage, start, end in zip(STAGES, marks[:-1], marks[1:], strict=True)}
        self.stats.note_batch(outcome, sum(len(plan.redelivered) for plan in plans), seconds)

    def ingest(self, plans: Sequence[PartitionPlan]) -> dict[str, list[Click]]:
        """The valid clicks to apply, by session in offset order; the others are queued as dead letters."""
        clicks: dict[str, list[Click]] = {}
        for plan in plans:
            for record in plan.to_apply():
                click, error_type, reason = parse_click(record.value, record.key, self.settings.max_message_bytes)
                if click is None:
                    self.dead_letter(record, error_type, reason)
                    continue
                clicks.setdefault(click.session_id, []).append(Click(click, record.partition, record.offset))
                self.stats.note_event_time(record.partition, click.timestamp)
        return clicks

    def load_states(self, clicks: dict[str, list[Click]]) -> tuple[dict[str, int], dict[str, SessionState | None]]:
        """(partition of each session, its stored state or None)."""
        partition_of = {session_id: session_clicks[0].partition for session_id, session_clicks in clicks.items()}
        states = {session_id: self.load_state(partition_of[session_id], session_key(session_id))
                  for session_id in clicks}
        return partition_of, states

    def load_state(self, partition: int, key: bytes) -> SessionState | None:
        pending = self._pending_states.get((partition, key))
        raw = pending[1] if pending is not None else self.store.get(partition, key)
        if raw is None:
            return None
        try:
            return SessionState.decode(raw)
        except StateDecodeError as error:
            self.stats.corrupt_states += 1
            log.warning("session %r: stored state unreadable (%s); starting it afresh", key, error)
            return None

    def process(self, model: ServingModel, clicks: dict[str, list[Click]], states: dict[str, SessionState | None],
                received_at: float) -> BatchOutcome:
        """The model step (pure: stream_worker/processor.py)."""
        return process_batch(model, clicks, states, self.settings.top_k, self.settings.ring_size, received_at)

    async def publish_soon(self, outcome: BatchOutcome) -> list[asyncio.Future[Any]]:
        """Send the predictions (with the dead letters queued before them); their delivery futures."""
        topic = self.settings.predictions_topic
        add = self.sender.add
        for session_id, payload in outcome.predictions:
            add(topic, session_key(session_id), payload)
        return await self.sender.flush()

    async def publish(self, outcome: BatchOutcome) -> None:
        await asyncio.gather(*await self.publish_soon(outcome))  # predictions are out before the states after them

    async def store_states(self, outcome: BatchOutcome, stored: dict[str, SessionState | None],
                           partition_of: dict[str, int], plans: Sequence[PartitionPlan]) -> None:
        """New states, then the progress covering them, then (when due) expiry; flushed to the changelog."""
        self.write(state_writes(outcome, stored, partition_of), progress_writes(plans),
                   {plan.partition for plan in plans})
        await self.sender.flush()  # changelog records; Faust's commit waits for them before committing offsets

    def write(self, states: Sequence[tuple[int, bytes, bytes]], progress: Sequence[tuple[int, int]],
              partitions: set[int], keep: set[tuple[int, bytes]] | None = None) -> None:
        """Session states, then each partition's progress after them (the changelog has the states before the
        progress that covers them), then expiry when due (sparing ``keep``: sessions a later batch in the
        pipeline has already moved on)."""
        for partition, key, value in states:
            self.store.put(partition, key, value)
        for partition, next_offset in progress:
            self.store.put_progress(partition, next_offset)
        if self.stats.expiry_due(self.settings.expiry_interval_s):
            self.expire_sessions(partitions, keep)

    # -------------------------------------------------------------------------------------------- the pipeline

    async def _front(self, records: list[Record], create_times: np.ndarray | None) -> asyncio.Future[None]:
        """Plan, ingest, load, process and send the predictions of one batch; its tail does the rest."""
        started = time.perf_counter()
        received_at = time.time()
        plans = await self.plan(records)
        model = self.holder.model
        clicks = self.ingest(plans)
        parsed = time.perf_counter()
        partition_of, states = self.load_states(clicks)
        loaded = time.perf_counter()
        outcome = self.process(model, clicks, states, received_at)
        modelled = time.perf_counter()
        self.stats.note_latency("modelled", time.time(), create_times)
        writes = state_writes(outcome, states, partition_of)
        progress = progress_writes(plans)
        encoded = time.perf_counter()
        deliveries = await self.publish_soon(outcome)
        sent = time.perf_counter()
        self._seq += 1
        batch = _Batch(self._seq, records, create_times, asyncio.get_running_loop().create_future(),
                       [(partition, key) for partition, key, _ in writes], [partition for partition, _ in progress],
                       {plan.partition for plan in plans})
        for partition, key, value in writes:
            self._pending_states[(partition, key)] = (batch.seq, value)
        for partition, next_offset in progress:
            self._pending_progress[partition] = (batch.seq, next_offset)
        seconds = {"parse": parsed - started, "load_state": loaded - parsed, "model": modelled - loaded,
                   "publish": sent - encoded, "ack_wait": 0.0, "store_state": encoded - modelled}
        previous = self._pipeline[-1].tail if self._pipeline else None
        batch.tail = asyncio.ensure_future(self._tail(batch, previous, deliveries, writes, progress, outcome,
                                                      sum(len(plan.redelivered) for plan in plans), seconds))
        self._pipeline.append(batch)
        return batch.done

    async def _tail(self, batch: _Batch, previous: asyncio.Future[bool] | None, deliveries: list[asyncio.Future[Any]],
                    writes: list[tuple[int, bytes, bytes]], progress: list[tuple[int, int]], outcome: BatchOutcome,
                    redelivered: int, seconds: dict[str, float]) -> bool:
        """After the previous batch's tail: wait for this batch's predictions to be acknowledged, then write its
        states and progress. False (and nothing written) if this or an earlier tail failed."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            if self._broken:
                return False
            waiting = time.perf_counter()
            await asyncio.gather(*deliveries)
            acked = time.perf_counter()
            self.stats.note_latency("acked", time.time(), batch.create_times)
            later = {key for key in self._pending_states if self._pending_states[key][0] > batch.seq}
            self.write(writes, progress, batch.partitions, later)
            written = time.perf_counter()
            await self.sender.flush()  # changelog records; Faust's commit waits for them before committing offsets
            self.stats.note_latency("stored", time.time(), batch.create_times)
            seconds["ack_wait"] = acked - waiting + time.perf_counter() - written  # (the flush waits for the
            seconds["store_state"] += written - acked  # producer's previous request: one in flight per broker)
            self.stats.note_batch(outcome, redelivered, seconds)
        except Exception:  # noqa: BLE001 - the batches in the pipeline are applied again the sequential way
            self.stats.batch_failures += 1
            log.exception("batch of %d clicks failed after its predictions were sent; the %d batch(es) in the "
                          "pipeline are applied again", len(batch.records), len(self._pipeline))
            self._broken = True
            if self._recovery is None or self._recovery.done():
                self._recovery = asyncio.ensure_future(self._recover_when_free())
            return False
        self._retire(batch)
        return True

    def _retire(self, batch: _Batch) -> None:
        """A stored batch leaves the pipeline; what it wrote is read from the store from now on."""
        for key in batch.state_keys:
            if self._pending_states.get(key, (0, b""))[0] == batch.seq:
                del self._pending_states[key]
        for partition in batch.progress_partitions:
            if self._pending_progress.get(partition, (0, 0))[0] == batch.seq:
                del self._pending_progress[partition]
        if self._pipeline and self._pipeline[0] is batch:
            self._pipeline.popleft()
        if not batch.done.done():
            batch.done.set_result(None)

    async def _make_room(self) -> None:
        """(Under the lock) until fewer than ``pipeline_depth`` batches wait for their acknowledgement."""
        while self._pipeline:
            if self._broken:
                await self._recover()
            elif len(self._pipeline) >= self.settings.pipeline_depth:
                await asyncio.wait([self._pipeline[0].tail or self._pipeline[0].done])
            else:
                return

    async def _drain(self) -> None:
        """(Under the lock) until the pipeline is empty."""
        while self._pipeline:
            if self._broken:
                await self._recover()
            else:
                await asyncio.wait([self._pipeline[-1].tail or self._pipeline[-1].done])

    async def _recover_when_free(self) -> None:
        async with self.lock:
            await self._recover()

    async def _recover(self) -> None:
        """(Under the lock) a tail failed: let every tail finish (they write nothing now), forget what the
        pipeline held in memory and apply its batches again from the stored progress, the sequential way."""
        if not self._broken:
            return
        tails = [batch.tail for batch in self._pipeline if batch.tail is not None]
        if tails:
            await asyncio.wait(tails)
        failed = list(self._pipeline)
        self._pipeline.clear()
        self._pending_states.clear()
        self._pending_progress.clear()
        self._broken = False
        records = [record for batch in failed for record in batch.records]
        log.warning("applying the %d clicks of %d batch(es) again after a failure", len(records), len(failed))
        self.sender.discard()
        try:
            await asyncio.sleep(self.settings.retry_backoff_s)
            await self.handle_or_dead_letter(records, lambda: self.plan(records), first_attempt=1)
        finally:
            for batch in failed:
                if not batch.done.done():
                    batch.done.set_result(None)


    # ------------------------------------------------------------------------------------------------ expiry

    def expire_sessions(self, partitions: set[int], keep: set[tuple[int, bytes]] | None = None) -> None:
        """Drop sessions idle for longer than the TTL in event time (per partition watermark), except ``keep``."""
        for partition in partitions:
            watermark = self.stats.watermark(partition)
            if watermark is None:
                continue
            expired = []
            for key, value in self.store.items(partition):
                if keep and (partition, key) in keep:
                    continue
                try:
                    if watermark - last_timestamp_of(value) > self.settings.session_ttl_s:
                        expired.append(key)
                except StateDecodeError:
                    expired.append(key)
            for key in expired:
                self.store.put(partition, key, None)
            self.stats.expired += len(expired)
            if expired:
                log.info("partition %d: expired %d idle sessions", partition, len(expired))


def state_writes(outcome: BatchOutcome, stored: dict[str, SessionState | None],
                 partition_of: dict[str, int]) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, encoded state) of every session a batch changed, and of every stored session whose
    clicks in the batch were all applied already: by an incarnation that wrote the state to RocksDB and crashed
    before the changelog had it (or by a failed attempt of this batch). Sending it again means the progress that
    follows never covers a state the changelog lacks."""
    writes = [(partition_of[session_id], session_key(session_id), state.encode())
              for session_id, state in outcome.states.items()]
    writes += [(partition_of[session_id], session_key(session_id), old.encode())
               for session_id, old in stored.items() if old is not None and session_id not in outcome.states]
    return writes


def progress_writes(plans: Sequence[PartitionPlan]) -> list[tuple[int, int]]:
    """(partition, next offset) of every partition a batch moves on."""
    return [(plan.partition, plan.end) for plan in plans if plan.end > plan.start]
