"""Read a time window of ClickEvent JSON from a Kafka topic into the canonical event frame."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError
from tqdm import tqdm

from schemas import ClickEvent
from stream_worker.settings import WorkerSettings, client_config
from stream_worker.tail import CONSUMER_OPTIONS, end_offsets

logger = logging.getLogger(__name__)

DEFAULT_SEEK_SLACK_S = 3600.0
"""Seek this much earlier than the window start: a record's Kafka timestamp may precede its event timestamp."""
_POLL_MS = 200
_PROBE_TIMEOUT_S = 5.0

ClientTarget = str | Mapping[str, Any] | WorkerSettings


class TopicReadError(ValueError):
    """The topic cannot be read (missing, or a partition stalled); the message is one line."""


@dataclass
class PartitionRead:
    """What was read from one partition: offsets [start_offset, end_offset) and how the start was found."""

    partition: int
    begin_offset: int  # log start (EARLIEST)
    start_offset: int  # where reading started
    end_offset: int  # true end (fetch high-water mark) when reading started; later records are left out
    seek: str  # "time-index" (offsets_for_times, verified), "scan" (from the log start) or "beginning"
    records: int = 0


@dataclass
class ReadReport:
    """Counts of one windowed read: records per partition, valid events kept, bad and out-of-window records."""

    topic: str
    start_ts: float
    end_ts: float
    partitions: dict[int, PartitionRead] = field(default_factory=dict)
    valid: int = 0  # events kept: parsed, inside [start_ts, end_ts), not a duplicate
    bad: dict[str, int] = field(default_factory=dict)  # reason -> records skipped
    before_window: int = 0
    after_window: int = 0
    duplicates: int = 0  # valid events read before with the same event_id and content (at-least-once delivery)
    time_index: str = "not used"  # what offsets_for_times gave: "used", "unreliable (...)", "unsupported (...)"
    seconds: float = 0.0

    @property
    def records_read(self) -> int:
        return sum(p.records for p in self.partitions.values())

    @property
    def outside_window(self) -> int:
        return self.before_window + self.after_window

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (partition keys become strings, infinite bounds become None)."""
        values = asdict(self)
        values["partitions"] = {str(k): v for k, v in values["partitions"].items()}
        for name in ("start_ts", "end_ts"):
            if not math.isfinite(values[name]):
                values[name] = None
        values.update(records_read=self.records_read, outside_window=self.outside_window, bad_total=self.bad_total)
        return values


def read_click_window(
    config: ClientTarget,
    topic: str,
    start_ts: float,
    end_ts: float,
    progress: bool = True,
    *,
    seek_slack_s: float = DEFAULT_SEEK_SLACK_S,
    idle_timeout_s: float = 30.0,
) -> tuple[pd.DataFrame, ReadReport]:
    """Events of ``topic`` whose event timestamp is in [start_ts, end_ts), as (session_id, item_id, timestamp).

    Every partition is read from the first offset whose Kafka record timestamp is >= ``start_ts -
    seek_slack_s`` (``offsets_for_times``, checked against the records it points at; when the broker's answer
    does not hold up, as on tansu, the partition is scanned from its log start) to its true end (fetch
    high-water mark, taken before reading; records produced later are left for the next read). Values that
    are empty, not JSON or not a valid ClickEvent are counted by reason and skipped; duplicate ``event_id``s
    are kept once. Rows are sorted by (timestamp, partition, offset).
    """

    if math.isnan(start_ts) or math.isnan(end_ts) or end_ts <= start_ts:
        raise ValueError(f"empty time window [{start_ts}, {end_ts})")
    started = time.monotonic()
    report = ReadReport(topic, float(start_ts), float(end_ts))
    with _assigned(config, topic) as (consumer, tps, begins, ends):
        starts, seek, report.time_index = _start_offsets(consumer, tps, start_ts - seek_slack_s, begins, ends)
        for tp in tps:
            p = tp.partition
            report.partitions[p] = PartitionRead(p, begins[p], starts[p], ends[p], seek[p])
        columns = _read_partitions(consumer, tps, report, progress, idle_timeout_s)
    frame = _frame(columns)
    report.seconds = time.monotonic() - started
    logger.info(
        "read %d records of %s in %.2f s: %d events in the window, %d outside, %d duplicates, %d bad %s "
        "(time index: %s)",
        report.records_read, topic, report.seconds, report.valid, report.outside_window, report.duplicates,
        report.bad_total, report.bad or "", report.time_index,
    )
    return frame, report


def newest_event_timestamp(config: ClientTarget, topic: str, tail_records: int = 200) -> float | None:
    """Largest event timestamp among the last ``tail_records`` valid records of each partition (None: none).

    A lower bound of the topic's newest event time when events arrive roughly in time order; reading a
    window from (this - N days) therefore never misses the last N days.
    """

    with _assigned(config, topic) as (consumer, tps, begins, ends):
        report = ReadReport(topic, -math.inf, math.inf)
        for tp in tps:
            p = tp.partition
            start = max(begins[p], ends[p] - tail_records)
            report.partitions[p] = PartitionRead(p, begins[p], start, ends[p], "tail")
        columns = _read_partitions(consumer, tps, report, False, 30.0)
    return max(columns["timestamp"]) if columns["timestamp"] else None


WindowReader = Callable[[str, float, float | None], tuple[pd.DataFrame, ReadReport]]
"""(topic, window_s, now) -> the window's events and the read report: see ``click_window_reader``."""


def read_recent_clicks(
    config: ClientTarget, topic: str, window_s: float, now: float | None = None, progress: bool = True
) -> tuple[pd.DataFrame, ReadReport]:
    """Events of the ``window_s`` seconds up to ``now`` (included), or up to the topic's newest event time.

    Without ``now`` the window starts ``window_s`` before ``newest_event_timestamp`` and has no end; raises
    TopicReadError when the topic holds no valid click event.
    """
    if now is not None:
        end_ts = math.nextafter(now, math.inf)  # the window includes ``now``
        return read_click_window(config, topic, now - window_s, end_ts, progress=progress)
    newest = newest_event_timestamp(config, topic)
    if newest is None:
        raise TopicReadError(f"topic {topic!r} has no valid click events")
    return read_click_window(config, topic, newest - window_s, math.inf, progress=progress)


def click_window_reader(config: ClientTarget, progress: bool = True) -> WindowReader:
    """A reader for ``offline.retrain.TopicSource``: ``read(topic, window_s, now)`` = ``read_recent_clicks``."""
    def read(topic: str, window_s: float, now: float | None) -> tuple[pd.DataFrame, ReadReport]:
        return read_recent_clicks(config, topic, window_s, now, progress=progress)

    return read


# ------------------------------------------------------------------------------------------------- internals


@contextlib.contextmanager
def _assigned(config: ClientTarget, topic: str) -> Iterator[tuple[Any, list[Any], dict[int, int], dict[int, int]]]:
    """A group-less consumer over every partition of ``topic``, with the log start and true end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    target = client_config(config)
    ends = end_offsets(target, topic)
    if not ends:
        raise TopicReadError(f"topic {topic!r} does not exist")
    consumer = KafkaConsumer(**{**target, **CONSUMER_OPTIONS})
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        begins = {tp.partition: int(offset) for tp, offset in consumer.beginning_offsets(tps).items()}
        yield consumer, tps, begins, ends
    finally:
        consumer.close()


def _start_offsets(
    consumer: Any, tps: list[Any], target_s: float, begins: dict[int, int], ends: dict[int, int]
) -> tuple[dict[int, int], dict[int, str], str]:
    """First offset per partition to read for events at/after ``target_s``, how it was found, and a verdict.

    ``offsets_for_times`` is trusted only where it holds up: the record at the answer carries the answered
    timestamp, which is >= the target, and the record before it is older than the target. Anything else
    (tansu answers offset 0 with the broker's wall clock for every query) falls back to the log start.
    """
    from kafka.errors import KafkaError

    starts = {tp.partition: begins[tp.partition] for tp in tps}
    if not math.isfinite(target_s) or target_s <= 0:
        return starts, dict.fromkeys(starts, "beginning"), "not used (window starts at the beginning)"
    seek = dict.fromkeys(starts, "scan")
    target_ms = int(math.floor(target_s * 1000))
    try:
        answers = consumer.offsets_for_times({tp: target_ms for tp in tps})
    except (KafkaError, ValueError) as error:  # UnsupportedVersionError, timeouts, ...
        return starts, seek, f"unsupported ({type(error).__name__}); scanned from the log start"
    problems: list[str] = []
    for tp in tps:
        p = tp.partition
        answer = answers.get(tp)
        problem = _check_answer(consumer, tp, answer, target_ms, begins[p], ends[p])
        if problem is None:
            starts[p] = ends[p] if answer is None else int(answer.offset)
            seek[p] = "time-index"
        else:
            problems.append(f"partition {p}: {problem}")
    if problems:
        logger.info("offsets_for_times does not hold up on this broker (%s); scanning those partitions from the "
                    "log start and filtering by event time", "; ".join(problems))
        return starts, seek, f"unreliable ({problems[0]}); scanned {len(problems)} partition(s) from the log start"
    return starts, seek, "used"


def _check_answer(consumer: Any, tp: Any, answer: Any, target_ms: int, begin: int, end: int) -> str | None:
    """Why the broker's time-index answer for ``tp`` cannot be trusted, or None when it holds up."""
    if answer is None:  # "no record at or after the target": then the last record must be older than it
        if end <= begin:
            return None
        last = _timestamp_at(consumer, tp, end - 1)
        return None if last is not None and last < target_ms else "answered 'none' but newer records exist"
    offset = int(answer.offset)
    if not begin <= offset <= end:
        return f"offset {offset} outside [{begin}, {end}]"
    if offset < end:
        stamp = _timestamp_at(consumer, tp, offset)
        if stamp is None or stamp < target_ms or stamp != int(answer.timestamp):
            return f"offset {offset} has record time {stamp}, answer said {answer.timestamp}, query {target_ms}"
    if offset > begin:
        before = _timestamp_at(consumer, tp, offset - 1)
        if before is None or before >= target_ms:
            return f"the record before offset {offset} is not older than the query"
    return None


def _timestamp_at(consumer: Any, tp: Any, offset: int) -> int | None:
    """Kafka timestamp (ms) of the first record at or after ``offset`` in ``tp``, or None within the timeout."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        for message in consumer.poll(timeout_ms=_POLL_MS, max_records=1).get(tp, []):
            if message.offset >= offset:
                return int(message.timestamp)
    return None


def _read_partitions(
    consumer: Any, tps: list[Any], report: ReadReport, progress: bool, idle_timeout_s: float
) -> dict[str, list[Any]]:
    """Read every partition from ``start_offset`` to ``end_offset``, parsing and counting into ``report``."""
    columns: dict[str, list[Any]] = {"session_id": [], "item_id": [], "timestamp": [], "partition": [], "offset": []}
    seen_ids: set[str] = set()
    consumer.assign(tps)
    pending = set()
    for tp in tps:
        read = report.partitions[tp.partition]
        if read.start_offset < read.end_offset:
            consumer.seek(tp, read.start_offset)
            pending.add(tp)
        else:
            consumer.pause(tp)
    total = sum(max(0, r.end_offset - r.start_offset) for r in report.partitions.values())
    last_progress = time.monotonic()
    with tqdm(total=total, unit="rec", desc=f"read {report.topic}", disable=not progress, smoothing=0.1) as bar:
        while pending:
            batches = consumer.poll(timeout_ms=_POLL_MS)
            for tp, messages in batches.items():
                read = report.partitions[tp.partition]
                counted = 0
                for message in messages:
                    if message.offset >= read.end_offset:
                        break
                    counted += 1
                    _parse(message.value, message.partition, message.offset, report, columns, seen_ids)
                read.records += counted
                bar.update(counted)
                if counted:
                    last_progress = time.monotonic()
            for tp in list(pending):
                if consumer.position(tp) >= report.partitions[tp.partition].end_offset:
                    pending.discard(tp)
                    consumer.pause(tp)
            if pending and time.monotonic() - last_progress > idle_timeout_s:
                stuck = ", ".join(f"{tp.partition}@{consumer.position(tp)}" for tp in sorted(pending))
                raise TopicReadError(f"reading {report.topic} stalled for {idle_timeout_s:g} s at partition@offset "
                                     f"{stuck} before the end offsets")
    return columns


def _parse(
    value: bytes | None, partition: int, offset: int, report: ReadReport, columns: dict[str, list[Any]],
    seen_ids: set[str],
) -> None:
    if not value:
        report.bad["empty"] = report.bad.get("empty", 0) + 1
        return
    try:
        event = ClickEvent.model_validate_json(value)
    except ValidationError as error:
        kind = error.errors(include_url=False)[0]["type"]
        reason = "invalid-json" if kind in ("json_invalid", "json_type") else "invalid-event"
        report.bad[reason] = report.bad.get(reason, 0) + 1
        return
    if event.timestamp < report.start_ts:
        report.before_window += 1
        return
    if event.timestamp >= report.end_ts:
        report.after_window += 1
        return
    if event.event_id is not None:
        # A redelivered or re-sent click repeats the whole event; a reused id with other content is another click.
        identity = f"{event.event_id}\x1f{event.session_id}\x1f{event.item_id}\x1f{event.timestamp!r}"
        if identity in seen_ids:
            report.duplicates += 1
            return
        seen_ids.add(identity)
    report.valid += 1
    columns["session_id"].append(event.session_id)
    columns["item_id"].append(event.item_id)
    columns["timestamp"].append(event.timestamp)
    columns["partition"].append(partition)
    columns["offset"].append(offset)


def _frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """Canonical event frame (as offline.loaders builds it), sorted by (timestamp, partition, offset)."""
    timestamps = np.asarray(columns["timestamp"], dtype=np.float64)
    order = np.lexsort((np.asarray(columns["offset"], np.int64), np.asarray(columns["partition"], np.int64),
                        timestamps))
    frame = pd.DataFrame({
        "session_id": np.asarray(columns["session_id"], dtype=object)[order],
        "item_id": np.asarray(columns["item_id"], dtype=object)[order],
        "timestamp": timestamps[order],
    })
    for name in ("session_id", "item_id"):
        frame[name] = frame[name].astype("str")
    return frame
