"""The batch path: delivered clicks -> plan -> ingest -> load states -> process -> publish -> store, with retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

from schemas import DeadLetter
from stream_worker.ingest import parse_click, session_key
from stream_worker.processor import BatchOutcome, Click, process_batch
from stream_worker.progress import PartitionPlan, plan_partition
from stream_worker.record import Record
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState, StateDecodeError, last_timestamp_of
from stream_worker.settings import WorkerSettings
from stream_worker.stats import WorkerStats

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


class BatchPath:
    """Applies batches of clicks to the sessions table; the agent and the catch-up timer share it (and its lock).

    One attempt at a batch (``handle``) runs the stages in this order: ``plan`` (progress, gaps read from the
    broker), ``ingest`` (valid clicks; the rest to the dead-letter topic), ``load_states``, ``process`` (pure),
    ``publish`` (predictions acknowledged), ``store_states`` (states, then progress, then the changelog flush).
    ``handle_or_dead_letter`` retries a failing batch and finally dead-letters it.
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

    # ------------------------------------------------------------------------------ entry points (agent, timer)

    async def handle_delivered(self, delivered: Sequence[Record]) -> None:
        """A batch the group consumer delivered (the clicks agent)."""
        assigned = self.partitions.assigned()
        records = []
        for record in delivered:
            self.stats.note_offset(record.partition, record.offset)
            if record.partition in assigned:
                records.append(record)
            else:  # delivered after its partition moved to another worker (a stale fetch): that worker applies it
                self.stats.foreign += 1
        async with self.lock:
            await self.handle_or_dead_letter(records, lambda: self.plan(records))
        self.stats.events += len(delivered)

    async def catch_up(self) -> None:
        """A partition behind its high-water mark with no click delivered for a whole interval (its consumer
        stopped short) is read from the broker up to that mark, a bounded chunk at a time."""
        settings = self.settings
        for partition in sorted(self.partitions.assigned()):
            while not self.partitions.rebalancing() and partition in self.partitions.assigned():
                highwater = self.partitions.highwater(partition)
                async with self.lock:
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

    async def handle_or_dead_letter(self, records: Sequence[Record], plan: Planner) -> None:
        """A failing batch is retried with backoff (the broker may be back); if it keeps failing, its clicks
        go to the dead-letter topic with the error, so the worker never dies on a batch and loses nothing."""
        settings, sender = self.settings, self.sender
        error: Exception | None = None
        plans: list[PartitionPlan] | None = None
        for attempt in range(settings.batch_retries + 1):
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
        """Apply planned clicks; ``marks`` time the stages (stream_worker/stats.py STAGES)."""
        received_at = time.time()
        marks = [time.perf_counter()]
        model = self.holder.model
        clicks = self.ingest(plans)
        marks.append(time.perf_counter())
        partition_of, states = self.load_states(clicks)
        marks.append(time.perf_counter())
        outcome = self.process(model, clicks, states, received_at)
        marks.append(time.perf_counter())
        await self.publish(outcome)
        marks.append(time.perf_counter())
        await self.store_states(outcome, states, partition_of, plans)
        marks.append(time.perf_counter())
        self.stats.note_batch(outcome, sum(len(plan.redelivered) for plan in plans), marks)

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
        raw = self.store.get(partition, key)
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

    async def publish(self, outcome: BatchOutcome) -> None:
        for session_id, payload in outcome.predictions:
            self.sender.add(self.settings.predictions_topic, session_key(session_id), payload)
        await asyncio.gather(*await self.sender.flush())  # predictions are out before the state that follows them

    async def store_states(self, outcome: BatchOutcome, stored: dict[str, SessionState | None],
                           partition_of: dict[str, int], plans: Sequence[PartitionPlan]) -> None:
        """New states, then the progress covering them, then (when due) expiry; flushed to the changelog."""
        for session_id, state in outcome.states.items():
            self.store.put(partition_of[session_id], session_key(session_id), state.encode())
        for session_id, old in stored.items():
            if old is not None and session_id not in outcome.states:
                # Its clicks were all applied already: by an incarnation that wrote the state to RocksDB and
                # crashed before the changelog had it (or by a failed attempt of this batch). Send it again, so
                # the progress below never covers a state the changelog lacks.
                self.store.put(partition_of[session_id], session_key(session_id), old.encode())
        for plan in plans:  # after the states: the changelog has them before the progress that covers them
            if plan.end > plan.start:
                self.store.put_progress(plan.partition, plan.end)
        if self.stats.expiry_due(self.settings.expiry_interval_s):
            self.expire_sessions({plan.partition for plan in plans})
        await self.sender.flush()  # changelog records; Faust's commit waits for them before committing offsets

    # ------------------------------------------------------------------------------------------------ expiry

    def expire_sessions(self, partitions: set[int]) -> None:
        """Drop sessions idle for longer than the TTL in event time (per partition watermark)."""
        for partition in partitions:
            watermark = self.stats.watermark(partition)
            if watermark is None:
                continue
            expired = []
            for key, value in self.store.items(partition):
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
