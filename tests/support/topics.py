"""Reading whole topics while a run goes on: a follower of every partition, a predictions index, a changelog."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from stream_worker.progress import PROGRESS_KEY


class TopicFollower:
    """Reads every partition of a topic from the beginning, keeping all records (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False,
                                      allow_auto_create_topics=False, auto_offset_reset="earliest",
                                      fetch_max_wait_ms=100, max_poll_records=5000)
        self.records: list[Any] = []
        self._assigned = False

    def poll(self, timeout_ms: int = 200) -> int:
        """Read what is there now; returns how many new records arrived."""
        from kafka import TopicPartition

        if not self._assigned:
            partitions = self.consumer.partitions_for_topic(self.topic)
            if not partitions:
                time.sleep(timeout_ms / 1000)
                return 0
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self._assigned = True
        new = 0
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.records += batch
            new += len(batch)
        return new

    def until(self, done: Callable[[list[Any]], bool], timeout_s: float, idle_s: float | None = None,
              tick: Callable[[], None] | None = None) -> bool:
        """Poll until ``done(records)``; False after ``timeout_s`` (or ``idle_s`` without a new record)."""
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll():
                last_new = time.monotonic()
            if tick is not None:
                tick()
            if done(self.records):
                return True
            if idle_s is not None and time.monotonic() - last_new > idle_s:
                return False
        return False

    def drain(self, idle_s: float = 2.0) -> list[Any]:
        """Read until nothing new arrives for ``idle_s`` seconds."""
        self.until(lambda _: False, timeout_s=600, idle_s=idle_s)
        return self.records

    def close(self) -> None:
        self.consumer.close()


class Predicted:
    """Incremental index over the records of a predictions TopicFollower."""

    def __init__(self, follower: TopicFollower) -> None:
        self.follower = follower
        self.events: set[str] = set()
        self.rows: list[tuple[float, int, str, str]] = []  # (CreateTime s, source partition, event id, version)

    def update(self) -> Predicted:
        """Index the records that arrived since the last update."""
        for record in self.follower.records[len(self.rows):]:
            prediction = json.loads(record.value)
            self.rows.append((record.timestamp / 1000, prediction["partition"], prediction["event_id"],
                              prediction["model_version"]))
            self.events.add(prediction["event_id"])
        return self


def last_values(records: Iterable[Any]) -> dict[bytes, bytes | None]:
    """Last value per key in offset order within each partition (a tombstone is None)."""
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return {r.key: r.value for r in ordered}


def read_changelog(bootstrap: str, app_id: str, idle_s: float = 3.0) -> dict[bytes, bytes | None]:
    """The sessions table as its changelog ``<app_id>-sessions-changelog`` says: last value per session."""
    follower = TopicFollower(bootstrap, f"{app_id}-sessions-changelog")
    try:
        return {k: v for k, v in last_values(follower.drain(idle_s)).items() if k != PROGRESS_KEY}
    finally:
        follower.close()
