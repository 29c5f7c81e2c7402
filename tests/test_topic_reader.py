"""Reading a time window of click events from a topic on the real embedded broker, bad records counted."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, NamedTuple

import pytest

from schemas import ClickEvent
from stream_worker.broker import create_topics
from stream_worker.tail import end_offsets
from stream_worker.topic_reader import TopicReadError, _start_offsets, newest_event_timestamp, read_click_window

T0 = 1_700_000_000.0
N_EVENTS = 200
PARTITIONS = 4


def _event(i: int) -> ClickEvent:
    return ClickEvent(session_id=f"s{i % 20}", item_id=f"item{i % 13}", timestamp=T0 + 60.0 * i,
                      event_id=f"s{i % 20}:{i}")


def _produce(bootstrap: str, topic: str) -> dict[int, int]:
    """200 valid events round-robin over 4 partitions, bad records and duplicates; returns records per partition."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5)
    sent = dict.fromkeys(range(PARTITIONS), 0)

    def send(partition: int, value: bytes | None, stamp_s: float | None) -> None:
        stamp = None if stamp_s is None else int(stamp_s * 1000)
        producer.send(topic, key=b"k", value=value, partition=partition, timestamp_ms=stamp)
        sent[partition] += 1

    for i in range(N_EVENTS):
        partition = i % PARTITIONS
        event = _event(i)
        # partition 3: Kafka record time = produce time (as `streamrec replay` does), not the event time
        send(partition, event.model_dump_json().encode(), None if partition == 3 else event.timestamp)
        if i % 37 == 0:
            producer.flush()  # several batches per partition
    inside = T0 + 60.0 * 100
    for value in (b"not json", b"{\"session_id\": ", b"\xff\xfe"):
        send(1, value, inside)
    send(2, b"", inside)
    send(2, None, inside)
    bad_event = {"session_id": "s1", "item_id": 7, "timestamp": inside}  # item id must be a string
    send(0, json.dumps(bad_event).encode(), inside)
    send(3, b'{"session_id": "s1", "item_id": "x", "timestamp": -5}', inside)
    for i in (60, 61):  # at-least-once delivery: the same events again, on another partition
        send((i + 1) % PARTITIONS, _event(i).model_dump_json().encode(), _event(i).timestamp)
    producer.flush()
    producer.close()
    return sent


@pytest.fixture(scope="module")
def click_topic(broker: Any) -> tuple[str, dict[int, int]]:
    topic = f"clicks-{uuid.uuid4().hex[:10]}"
    create_topics(broker.bootstrap, {topic: PARTITIONS})
    return topic, _produce(broker.bootstrap, topic)


def test_reads_exactly_the_window_and_counts_bad_records(broker: Any, click_topic: tuple[str, dict[int, int]]) -> None:
    topic, sent = click_topic
    start, end = T0 + 60.0 * 50, T0 + 60.0 * 150  # events 50..149
    frame, report = read_click_window(broker.bootstrap, topic, start, end, progress=False)

    expected = [_event(i) for i in range(50, 150)]
    assert list(frame.columns) == ["session_id", "item_id", "timestamp"]
    assert frame["session_id"].tolist() == [e.session_id for e in expected]
    assert frame["item_id"].tolist() == [e.item_id for e in expected]
    assert frame["timestamp"].tolist() == [e.timestamp for e in expected]
    assert frame["timestamp"].dtype == "float64"

    assert report.valid == 100 and report.duplicates == 2
    assert report.before_window == 50 and report.after_window == 50 and report.outside_window == 100
    assert report.bad == {"invalid-json": 3, "empty": 2, "invalid-event": 2}
    assert report.records_read == sum(sent.values()) == N_EVENTS + 9
    assert end_offsets(broker.bootstrap, topic) == {p: sent[p] for p in range(PARTITIONS)}
    for partition, read in report.partitions.items():
        assert read.end_offset == sent[partition] and read.records == read.end_offset - read.start_offset
    # tansu ignores the time in offsets_for_times (offset 0, wall-clock time): every partition is scanned.
    assert report.time_index.startswith(("used", "unreliable"))
    assert report.to_dict()["bad_total"] == 7


def test_window_bounds_are_half_open_and_empty_windows_refused(
    broker: Any, click_topic: tuple[str, dict[int, int]]
) -> None:
    topic, _ = click_topic
    frame, report = read_click_window(broker.bootstrap, topic, T0 + 60.0 * 10, T0 + 60.0 * 12, progress=False)
    assert frame["timestamp"].tolist() == [T0 + 600.0, T0 + 660.0]
    everything, full = read_click_window(broker.bootstrap, topic, -math.inf, math.inf, progress=False)
    assert len(everything) == N_EVENTS and full.duplicates == 2 and full.outside_window == 0
    assert full.to_dict()["start_ts"] is None
    with pytest.raises(ValueError, match="empty time window"):
        read_click_window(broker.bootstrap, topic, T0, T0, progress=False)


def test_newest_event_and_missing_topic(broker: Any, click_topic: tuple[str, dict[int, int]]) -> None:
    topic, _ = click_topic
    assert newest_event_timestamp(broker.bootstrap, topic) == T0 + 60.0 * (N_EVENTS - 1)
    with pytest.raises(TopicReadError, match="does not exist"):
        read_click_window(broker.bootstrap, f"missing-{uuid.uuid4().hex[:8]}", T0, T0 + 1, progress=False)


# ------------------------------------------------------------------ the time-index check, against a fake broker


class _TP(NamedTuple):
    topic: str
    partition: int


class _Answer(NamedTuple):
    offset: int
    timestamp: int


class _Message(NamedTuple):
    offset: int
    timestamp: int


class _FakeConsumer:
    """Record timestamps (ms) per partition and a scripted offsets_for_times answer."""

    def __init__(self, stamps: dict[int, list[int]], answers: dict[int, _Answer | None]) -> None:
        self.stamps, self.answers = stamps, answers
        self.position: tuple[Any, int] | None = None

    def offsets_for_times(self, query: dict[Any, int]) -> dict[Any, _Answer | None]:
        return {tp: self.answers[tp.partition] for tp in query}

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.position = (tp, offset)

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[_Message]]:
        assert self.position is not None
        tp, offset = self.position
        return {tp: [_Message(offset, self.stamps[tp.partition][offset])]}


def test_time_index_is_used_when_it_holds_up_and_ignored_when_it_does_not() -> None:
    stamps = {0: [1000, 2000, 3000, 4000], 1: [1000, 2000, 3000, 4000], 2: [1000, 2000], 3: [5000, 6000]}
    begins = dict.fromkeys(stamps, 0)
    ends = {p: len(s) for p, s in stamps.items()}
    tps = [_TP("t", p) for p in stamps]
    correct = {0: _Answer(2, 3000), 1: _Answer(2, 3000), 2: None, 3: _Answer(0, 5000)}
    starts, seek, verdict = _start_offsets(_FakeConsumer(stamps, correct), tps, 2.5, begins, ends)
    assert verdict == "used" and starts == {0: 2, 1: 2, 2: 2, 3: 0} and set(seek.values()) == {"time-index"}

    tansu_like = {**correct, 1: _Answer(0, 1_795_000_000_000), 2: _Answer(0, 1_795_000_000_000)}
    starts, seek, verdict = _start_offsets(_FakeConsumer(stamps, tansu_like), tps, 2.5, begins, ends)
    assert verdict.startswith("unreliable") and starts == {0: 2, 1: 0, 2: 0, 3: 0}
    assert seek == {0: "time-index", 1: "scan", 2: "scan", 3: "time-index"}

    too_far = {**correct, 0: _Answer(3, 4000)}  # skipping offset 2 (3000 >= 2500) would lose an event
    starts, seek, _ = _start_offsets(_FakeConsumer(stamps, too_far), tps, 2.5, begins, ends)
    assert starts[0] == 0 and seek[0] == "scan"
