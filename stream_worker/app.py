"""The Faust worker: clicks topic -> sessions table (RocksDB + changelog) -> predictions topic, top to bottom."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP, EventT
from pydantic import ValidationError

from schemas import ClickEvent, DeadLetter, ModelManifest, OnlineMetrics
from stream_worker.batch_sender import BatchSender
from stream_worker.gap_reader import GapReader
from stream_worker.model_holder import ModelHolder
from stream_worker.online_metrics import OnlineEvaluator
from stream_worker.processor import Click, process_batch
from stream_worker.progress import PartitionPlan, plan_partition
from stream_worker.session_state import SessionState, StateDecodeError, last_timestamp_of
from stream_worker.session_store import SessionStore
from stream_worker.settings import WorkerSettings
from stream_worker.stats import WorkerStats, prometheus_text
from stream_worker.tail import Record
from stream_worker.transport import Transport

log = logging.getLogger(__name__)


class StreamrecApp(faust.App):
    """faust.App on the patched aiokafka transport (fetch wait, verified end offsets)."""

    fetch_max_wait_ms: int = 1500
    gap_reader: GapReader | None = None

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self, loop=self.loop)

    async def on_stop(self) -> None:
        if self.gap_reader is not None:
            await self.gap_reader.close()
        await super().on_stop()


def _key(session_id: str) -> bytes:
    return session_id.encode("utf-8", "surrogatepass")


def parse_click(raw: Any, key: bytes | None, max_bytes: int) -> tuple[ClickEvent | None, str, str]:
    """(event, error_type, reason): the event when valid, else why it goes to the dead-letter topic."""
    if not isinstance(raw, bytes | bytearray):
        return None, "invalid_payload", "message value is empty"
    if len(raw) > max_bytes:
        return None, "payload_too_large", f"message of {len(raw)} bytes exceeds the limit of {max_bytes}"
    try:
        click = ClickEvent.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        if len(where) > 80 or not where.isprintable():  # unknown field names come from the message itself
            where = ascii(where[:80])
        kind = "invalid_json" if first["type"] == "json_invalid" else "validation"
        return None, kind, f"{where}: {first['msg']} ({error.error_count()} error(s))"
    if key is None or key != _key(click.session_id):
        return None, "key_mismatch", "message key must be the session id (co-partitioning with the sessions table)"
    return click, "", ""


def make_faust_app(settings: WorkerSettings) -> StreamrecApp:
    """The Faust app configured for streamrec (at-least-once, RocksDB, short group timeouts for tansu)."""
    app = StreamrecApp(
        settings.app_id,
        broker=settings.broker_url(),
        broker_credentials=settings.faust_credentials(),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=10.0,
        broker_commit_interval=settings.commit_interval_s,
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    return app


def build_app(settings: WorkerSettings, holder: ModelHolder) -> faust.App:
    """Create the app with its topics, table, agents, timers and web views."""
    app = make_faust_app(settings)
    stats = WorkerStats(online=OnlineEvaluator(settings.online_window))

    clicks_topic = app.topic(settings.clicks_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    predictions_topic = app.topic(settings.predictions_topic, partitions=settings.partitions)
    dead_letter_topic = app.topic(settings.dead_letter_topic, partitions=1)
    model_updates_topic = app.topic(settings.model_updates_topic, key_type=bytes, value_type=bytes, partitions=1)
    metrics_topic = app.topic(settings.metrics_topic, partitions=1)
    sessions = app.Table("sessions", key_type=bytes, value_type=bytes, partitions=settings.partitions)
    sender = BatchSender(lambda: app.producer._ensure_producer())  # type: ignore[attr-defined]
    store = SessionStore(sessions, sender)

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(topic, key, value, None, None, None)

    gap_reader = GapReader(settings.bootstrap_list(),
                           **credentials_to_aiokafka_auth(settings.faust_credentials(), settings.ssl_context()))
    app.gap_reader = gap_reader
    table_lock = asyncio.Lock()  # batches of the agent and the catch-up timer apply clicks one at a time

    def dead_letter(record: Record, error_type: str, reason: str) -> None:
        letter = DeadLetter.from_raw(
            raw=record.value if isinstance(record.value, bytes) else b"", error=reason, error_type=error_type,
            topic=settings.clicks_topic, partition=record.partition, offset=record.offset, received_at=time.time(),
        )
        stats.dead_letters += 1
        stats.dead_letters_by_type[error_type] = stats.dead_letters_by_type.get(error_type, 0) + 1
        sender.add(settings.dead_letter_topic, record.key, letter.model_dump_json().encode())

    def load_state(partition: int, key: bytes) -> SessionState | None:
        raw = store.get(partition, key)
        if raw is None:
            return None
        try:
            return SessionState.decode(raw)
        except StateDecodeError as error:
            stats.corrupt_states += 1
            log.warning("session %r: stored state unreadable (%s); starting it afresh", key, error)
            return None

    async def plan_batch(records: Sequence[Record]) -> list[PartitionPlan]:
        """Per partition: the delivered clicks not applied yet, with the offsets the consumer skipped read from
        the broker, so they are applied in offset order, each once (see stream_worker/progress.py)."""
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        plans = [plan_partition(p, rs, progress_of(p)) for p, rs in by_partition.items()]
        for plan in plans:
            await fill_gaps(plan)
        return plans

    def progress_of(partition: int) -> int | None:
        progress = store.get_progress(partition)
        highwater = app.consumer.highwater(TP(settings.clicks_topic, partition))
        if progress is not None and highwater is not None and progress > highwater:
            log.error("%s[%d]: the table's progress %d is past the end of the partition (%d): the topic was "
                      "recreated? Starting again from the delivered clicks", settings.clicks_topic, partition,
                      progress, highwater)
            return None
        return progress

    async def fill_gaps(plan: PartitionPlan) -> None:
        plan.truncate(settings.gap_read_max_records)
        for first, stop in plan.missing():
            log.warning("%s[%d]: offsets %d..%d were not delivered by the consumer; reading them from the broker",
                        settings.clicks_topic, plan.partition, first, stop - 1)
            fetched = await gap_reader.read(settings.clicks_topic, plan.partition, first, stop)
            plan.fill(fetched)
            stats.gaps += 1
            stats.gap_records += len(fetched)

    async def handle(plans: Sequence[PartitionPlan]) -> None:
        received_at = time.time()
        marks = [time.perf_counter()]
        model = holder.model
        clicks: dict[str, list[Click]] = {}
        for plan in plans:
            for record in plan.to_apply():
                click, error_type, reason = parse_click(record.value, record.key, settings.max_message_bytes)
                if click is None:
                    dead_letter(record, error_type, reason)
                    continue
                clicks.setdefault(click.session_id, []).append(Click(click, record.partition, record.offset))
                stats.note_event_time(record.partition, click.timestamp)
        marks.append(time.perf_counter())
        partition_of = {session_id: session_clicks[0].partition for session_id, session_clicks in clicks.items()}
        states = {session_id: load_state(partition_of[session_id], _key(session_id)) for session_id in clicks}
        marks.append(time.perf_counter())
        outcome = process_batch(model, clicks, states, settings.top_k, settings.ring_size, received_at)
        marks.append(time.perf_counter())
        for session_id, payload in outcome.predictions:
            sender.add(settings.predictions_topic, _key(session_id), payload)
        await asyncio.gather(*await sender.flush())  # predictions are out before the state that follows them
        marks.append(time.perf_counter())
        for session_id, state in outcome.states.items():
            store.put(partition_of[session_id], _key(session_id), state.encode())
        for session_id, stored in states.items():
            if stored is not None and session_id not in outcome.states:
                # Its clicks were all applied already: by an incarnation that wrote the state to RocksDB and
                # crashed before the changelog had it (or by a failed attempt of this batch). Send it again, so
                # the progress below never covers a state the changelog lacks.
                store.put(partition_of[session_id], _key(session_id), stored.encode())
        for plan in plans:  # after the states: the changelog has them before the progress that covers them
            if plan.end > plan.start:
                store.put_progress(plan.partition, plan.end)
        if stats.expiry_due(settings.expiry_interval_s):
            expire_sessions({plan.partition for plan in plans})
        await sender.flush()  # changelog records; Faust's commit waits for them before committing offsets
        marks.append(time.perf_counter())
        stats.note_batch(outcome, sum(len(plan.redelivered) for plan in plans), marks)

    def expire_sessions(partitions: set[int]) -> None:
        """Drop sessions idle for longer than the TTL in event time (per partition watermark)."""
        for partition in partitions:
            watermark = stats.watermark(partition)
            if watermark is None:
                continue
            expired = []
            for key, value in store.items(partition):
                try:
                    if watermark - last_timestamp_of(value) > settings.session_ttl_s:
                        expired.append(key)
                except StateDecodeError:
                    expired.append(key)
            for key in expired:
                store.put(partition, key, None)
            stats.expired += len(expired)
            if expired:
                log.info("partition %d: expired %d idle sessions", partition, len(expired))

    def assigned_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.clicks_topic}

    @app.agent(clicks_topic)
    async def process_clicks(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await handle_delivered(events)

    async def handle_delivered(events: Sequence[EventT]) -> None:
        assigned = assigned_partitions()
        records = []
        for event in events:
            message = event.message
            stats.note_offset(message.partition, message.offset)
            if message.partition in assigned:
                records.append(Record(message.key, message.value, message.partition, message.offset))
            else:  # delivered after its partition moved to another worker (a stale fetch): that worker applies it
                stats.foreign += 1
        async with table_lock:
            await handle_or_dead_letter(records, lambda: plan_batch(records))
        stats.events += len(events)

    async def handle_or_dead_letter(records: Sequence[Record], plan: Callable[[], Awaitable[list[PartitionPlan]]]
                                    ) -> None:
        """A failing batch is retried with backoff (the broker may be back); if it keeps failing, its clicks
        go to the dead-letter topic with the error, so the worker never dies on a batch and loses nothing."""
        error: Exception | None = None
        plans: list[PartitionPlan] | None = None
        for attempt in range(settings.batch_retries + 1):
            sender.discard()
            try:
                plans = await plan()
                await handle(plans)
                return
            except Exception as failure:  # noqa: BLE001 - one bad batch must not stop the worker
                error = failure
                stats.batch_failures += 1
                log.exception("batch of %d clicks failed (attempt %d)", len(records), attempt + 1)
                await asyncio.sleep(min(settings.retry_backoff_s * 2**attempt, 30.0))
        sender.discard()
        failed = [r for p in plans for r in p.to_apply()] if plans is not None else records
        for record in failed:
            dead_letter(record, "processing_failed", f"{type(error).__name__}: {error}")
        await asyncio.gather(*await sender.flush())
        for p in plans or ():  # dead-lettered clicks count as handled; without a plan, a later batch re-reads them
            store.put_progress(p.partition, p.end)
        await sender.flush()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # (mode's stub wants a positional-only sender)
    async def reread_progress(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        store.forget_applied()  # Faust flushed the producer: RocksDB has every delivered progress

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def restart_idle_clocks(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        stats.note_assigned(tp.partition for tp in assigned if tp.topic == settings.clicks_topic)

    @app.timer(settings.catch_up_interval_s)
    async def catch_up() -> None:
        """A partition behind its high-water mark with no click delivered for a whole interval (its consumer
        stopped short) is read from the broker up to that mark, a bounded chunk at a time."""
        for partition in sorted(assigned_partitions()):
            while not app.rebalancing and partition in assigned_partitions():
                highwater = app.consumer.highwater(TP(settings.clicks_topic, partition))
                async with table_lock:
                    progress = progress_of(partition)
                    if (highwater is None or progress is None or progress >= highwater
                            or stats.delivered_within(partition, settings.catch_up_interval_s)):
                        break
                    log.warning("%s[%d]: nothing delivered for %.0f s while offsets %d..%d are not applied",
                                settings.clicks_topic, partition, settings.catch_up_interval_s, progress,
                                highwater - 1)
                    stalled = PartitionPlan(partition, progress, end=int(highwater))

                    async def plan(stalled: PartitionPlan = stalled) -> list[PartitionPlan]:
                        await fill_gaps(stalled)
                        return [stalled]

                    await handle_or_dead_letter([], plan)
                    if (store.get_progress(partition) or 0) <= progress:
                        break  # failed (e.g. the broker is gone): the next tick tries again

    @app.task
    async def check_partitions() -> None:
        """The sessions table is co-partitioned with the clicks topic: refuse to run on a mismatch."""
        await clicks_topic.maybe_declare()
        producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
        found = len(await producer.partitions_for(settings.clicks_topic))
        if found != settings.partitions:
            message = (f"topic {settings.clicks_topic} has {found} partitions but STREAMREC_PARTITIONS is "
                       f"{settings.partitions}: the sessions table must be co-partitioned with it")
            log.critical(message)
            await app.crash(RuntimeError(message))

    @app.agent(model_updates_topic)
    async def model_updates(stream: Any) -> None:
        async for raw in stream:
            try:
                manifest = ModelManifest.model_validate_json(raw)
            except ValidationError as error:
                log.error("ignored model update: invalid manifest (%s)", error.errors(include_url=False)[0]["msg"])
                holder.failures += 1
                continue
            await holder.load_version(manifest.version)

    @app.timer(settings.model_poll_s)
    async def follow_current_pointer() -> None:
        await holder.follow_current()

    @app.timer(settings.metrics_interval_s)
    async def publish_online_metrics() -> None:
        """One OnlineMetrics message per model version evaluated so far (rolling window and since start)."""
        worker = f"{settings.app_id}@{socket.gethostname()}:{settings.web_port}"
        for version in stats.online.versions():
            since_start, window = stats.online.counts(version)
            report = OnlineMetrics(worker=worker, model_version=version, produced_at=time.time(),
                                   since_start=since_start, window=window, window_size=stats.online.window_size)
            await send(settings.metrics_topic, version.encode(), report.model_dump_json().encode())

    @app.task
    async def declare_output_topics() -> None:
        for topic in (predictions_topic, dead_letter_topic, model_updates_topic, metrics_topic):
            await topic.maybe_declare()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "model_version": holder.model.version})

    @app.page("/stats")
    async def stats_view(web: Any, request: Any) -> Any:
        return web.json(stats.snapshot(holder, _lags(app, settings), store.size()))

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        text = prometheus_text(stats.snapshot(holder, _lags(app, settings), store.size()))
        return web.text(text, content_type="text/plain; version=0.0.4")

    app.streamrec_stats = stats  # type: ignore[attr-defined]
    return app


def _lags(app: faust.App, settings: WorkerSettings) -> dict[int, int]:
    """Per assigned clicks partition: high-water mark minus the next offset to process."""
    stats: WorkerStats = app.streamrec_stats  # type: ignore[attr-defined]
    lags = {}
    try:
        assignment = app.consumer.assignment()
    except Exception:  # consumer not started yet
        return {}
    for tp in assignment:
        if tp.topic != settings.clicks_topic:
            continue
        highwater = app.consumer.highwater(tp)
        if highwater is not None:
            lags[tp.partition] = max(int(highwater) - stats.next_offset(tp.partition), 0)
    return lags
