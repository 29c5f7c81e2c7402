"""Replay a click log into Kafka as ClickEvent JSON keyed by session id, in time order, optionally paced."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from schemas.events import MAX_ID_LENGTH, MAX_TIMESTAMP, ClickEvent
from stream_worker.settings import client_config

logger = logging.getLogger(__name__)

PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "batch_size": 512 * 1024,
    "compression_type": None,
    "max_block_ms": 15_000,  # fail instead of hanging a minute when the broker is gone
}
"""kafka-python producer options used by replay (idempotence stays on: kafka-python's default, works on tansu)."""

_SLEEP_SLACK_S = 0.0005  # ahead of schedule by less than this: send now
_ERROR_CHECK_EVERY = 1000  # events between checks for asynchronous send failures


class ReplayError(RuntimeError):
    """Events could not be delivered to Kafka; the message is one line."""


def event_id(session_id: str, position: int) -> str:
    """Deterministic event id of the ``position``-th click (0-based, time order) of a session."""
    text = f"{session_id}:{position}"
    if len(text) <= MAX_ID_LENGTH:
        return text
    return "sha1:" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def time_ordered(frame: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """Events sorted by timestamp (stable: ties keep file order), the first ``limit`` only, checked for replay.

    Adds ``position`` (0-based index of each event within its session, in time order). Raises ValueError
    naming the first event that cannot become a valid ClickEvent, so nothing is sent from a bad file.
    """
    missing = {"session_id", "item_id", "timestamp"} - set(frame.columns)
    if missing:
        raise ValueError(f"event frame lacks column(s) {', '.join(sorted(missing))}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ordered = frame.sort_values("timestamp", kind="stable")
    if limit is not None:
        ordered = ordered.iloc[:limit]
    ordered = ordered.reset_index(drop=True)
    _check_replayable(ordered)
    ordered["position"] = ordered.groupby("session_id", sort=False).cumcount()
    return ordered


def click_messages(ordered: pd.DataFrame) -> Iterator[tuple[bytes, bytes, float]]:
    """(key, value, timestamp) per event of a ``time_ordered`` frame: key = session id, value = ClickEvent JSON."""
    sessions = ordered["session_id"].astype(str).tolist()
    items = ordered["item_id"].astype(str).tolist()
    stamps = ordered["timestamp"].astype(np.float64).tolist()
    positions = ordered["position"].tolist()
    users = ordered["user_id"].astype(str).tolist() if "user_id" in ordered.columns else None
    ratings = ordered["rating"].astype(np.float64).tolist() if "rating" in ordered.columns else None
    for row, (session, item, stamp, position) in enumerate(zip(sessions, items, stamps, positions, strict=True)):
        rating = ratings[row] if ratings is not None else None
        event = ClickEvent(
            session_id=session,
            item_id=item,
            timestamp=float(stamp),
            event_id=event_id(session, int(position)),
            user_id=users[row] if users is not None else None,
            rating=rating if rating is not None and math.isfinite(rating) else None,
        )
        yield session.encode("utf-8", "surrogatepass"), event.model_dump_json().encode("utf-8"), stamp


def replay_events(
    frame: pd.DataFrame,
    producer_config: str | Mapping[str, Any],
    topic: str,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    *,
    partitions: int | None = None,
) -> int:
    """Produce the events of ``frame`` to ``topic`` in time order; returns how many were acknowledged.

    ``producer_config`` is a bootstrap string or kafka-python connection kwargs (e.g.
    ``WorkerSettings.kafka_python_config()``). ``rate`` caps events per second; ``speedup`` keeps the
    original gaps between events divided by it (3600: an hour of log per second); both together: the
    original timing, but never faster than ``rate``; neither: as fast as possible. ``partitions``: create
    the topic with that many partitions first if it does not exist (otherwise the broker's default applies).
    Raises ReplayError if any event was not acknowledged after the producer's retries.
    """
    for name, pace in (("rate", rate), ("speedup", speedup)):
        if pace is not None and not (math.isfinite(pace) and pace > 0):
            raise ValueError(f"{name} must be a positive number, got {pace}")
    ordered = time_ordered(frame, limit)
    total = len(ordered)
    if partitions is not None:
        from stream_worker.broker import create_topics

        create_topics(producer_config, {topic: partitions})
    producer = _producer(producer_config)
    failures = _Failures()
    sent = 0
    started = time.monotonic()
    try:
        first_stamp: float | None = None
        scheduled = started
        with tqdm(total=total, unit="ev", disable=not progress, desc=f"replay -> {topic}", smoothing=0.1) as bar:
            for key, value, stamp in click_messages(ordered):
                if first_stamp is None:
                    first_stamp = stamp
                target = scheduled + 1.0 / rate if rate and sent else started
                if speedup:
                    target = max(target, started + (stamp - first_stamp) / speedup)
                scheduled = target
                delay = target - time.monotonic()
                if delay > _SLEEP_SLACK_S:
                    time.sleep(delay)
                producer.send(topic, key=key, value=value).add_errback(failures.record)
                sent += 1
                bar.update(1)
                if sent % _ERROR_CHECK_EVERY == 0:
                    failures.raise_if_any(topic, sent)
        producer.flush()
        failures.raise_if_any(topic, sent)
    finally:
        producer.close(timeout=5)
    seconds = time.monotonic() - started
    logger.info("replayed %d events to %s in %.2f s (%.0f events/s)", sent, topic, seconds, sent / max(seconds, 1e-9))
    return sent


def produce_raw(
    target: str | Mapping[str, Any],
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
) -> int:
    """Send ``(key, value)`` byte pairs unchanged (e.g. malformed messages for tests); returns the count.

    Waits for every acknowledgement; raises ReplayError if any record failed.
    """
    producer = _producer(target, max_request_size=16 * 1024 * 1024)
    failures = _Failures()
    count = 0
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=partition).add_errback(failures.record)
            count += 1
        producer.flush()
        failures.raise_if_any(topic, count)
    finally:
        producer.close(timeout=5)
    return count


# ------------------------------------------------------------------------------------------------- internals


def _producer(target: str | Mapping[str, Any], **overrides: Any) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    config = {**client_config(target), **PRODUCER_OPTIONS, **overrides}
    try:
        return KafkaProducer(**config)
    except KafkaError as error:
        servers = ",".join(config["bootstrap_servers"])
        raise ReplayError(f"cannot connect to Kafka at {servers}: {error}") from None


class _Failures:
    """First asynchronous send error and how many sends failed (errbacks run on the producer thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first: BaseException | None = None

    def record(self, error: BaseException) -> None:
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = error

    def raise_if_any(self, topic: str, attempted: int) -> None:
        with self._lock:
            if self.first is not None:
                raise ReplayError(f"{self.count} of {attempted} messages to {topic} failed: {self.first}")


def _check_replayable(ordered: pd.DataFrame) -> None:
    stamps = ordered["timestamp"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(stamps) | (stamps < 0) | (stamps > MAX_TIMESTAMP)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"event of session {ordered['session_id'].iat[row]!r} has timestamp {stamps[row]!r}; "
                         "ClickEvent needs epoch seconds between 1970 and 2200")
    for column in ("session_id", "item_id"):
        values = ordered[column].astype(str)
        lengths = values.str.len().to_numpy()
        blank = values.str.strip().eq("").to_numpy()
        wrong = (lengths > MAX_ID_LENGTH) | blank
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            shown = str(values.iat[row])[:60]
            raise ValueError(f"{column} {shown!r} is blank or longer than {MAX_ID_LENGTH} characters")
    if "user_id" in ordered.columns:
        too_long = ordered["user_id"].astype(str).str.len().to_numpy() > MAX_ID_LENGTH
        if too_long.any():
            row = int(np.flatnonzero(too_long)[0])
            raise ValueError(f"user_id longer than {MAX_ID_LENGTH} characters in session "
                             f"{ordered['session_id'].iat[row]!r}")
