"""Read a topic without a consumer group (all partitions assigned), robust to tansu's ListOffsets bug."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Mapping
from typing import Any

from stream_worker.record import Record
from stream_worker.settings import client_config

logger = logging.getLogger(__name__)

CONSUMER_OPTIONS: dict[str, Any] = {
    "group_id": None,
    "enable_auto_commit": False,
    "allow_auto_create_topics": False,  # reading must never create a topic with the broker's default partitions
    "auto_offset_reset": "earliest",
    "fetch_max_wait_ms": 100,
}
_POLL_MS = 200


def iter_topic(
    target: str | Mapping[str, Any],
    topic: str,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_timeout_s: float | None = 5.0,
    expected: int | None = None,
    start_offsets: Mapping[int, int] | None = None,
) -> Generator[Record, None, None]:
    """Yield the messages of every partition of ``topic`` (offset order within a partition).

    Starts at the beginning, or with ``from_beginning=False`` at the true end of each partition (the fetch
    high-water mark, not tansu's wrong ListOffsets LATEST); ``start_offsets`` ({partition: offset}) overrides
    the start of the partitions it names. Stops after ``limit`` messages, as soon as ``expected`` messages
    were read, or when nothing arrived for ``idle_timeout_s`` seconds (None: never; waiting for the topic to
    exist counts as idle). Closing the generator closes the consumer.
    """
    from kafka import KafkaConsumer, TopicPartition

    for name, count in (("limit", limit), ("expected", expected)):
        if count is not None and count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    caps = [count for count in (limit, expected) if count is not None]
    stop_after = min(caps) if caps else None
    if stop_after == 0:
        return
    consumer = KafkaConsumer(**{**client_config(target), **CONSUMER_OPTIONS})
    try:
        last_activity = time.monotonic()
        partitions = _wait_for_partitions(consumer, topic, last_activity, idle_timeout_s)
        if not partitions:
            logger.info("topic %s does not exist (waited %s s)", topic, idle_timeout_s)
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            for tp, offset in _true_end_offsets(consumer, tps).items():
                consumer.seek(tp, offset)
        for tp in tps:
            if start_offsets is not None and tp.partition in start_offsets:
                consumer.seek(tp, int(start_offsets[tp.partition]))
        read = 0
        last_activity = time.monotonic()
        while True:
            batches = consumer.poll(timeout_ms=_POLL_MS)
            now = time.monotonic()
            for tp in sorted(batches, key=lambda t: t.partition):
                for message in batches[tp]:
                    yield Record(message.key, message.value, message.partition, message.offset)
                    read += 1
                    if stop_after is not None and read >= stop_after:
                        return
                last_activity = now
            if idle_timeout_s is not None and time.monotonic() - last_activity > idle_timeout_s:
                return
    finally:
        consumer.close()


def read_topic(
    config: str | Mapping[str, Any],
    topic: str,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_timeout_s: float | None = 5.0,
    expected: int | None = None,
    start_offsets: Mapping[int, int] | None = None,
) -> list[Record]:
    """All messages of ``topic`` as a list of Record(key, value, partition, offset); see ``iter_topic``.

    For tests: pass ``expected`` to return as soon as that many arrived (surplus messages beyond it are not
    seen: read again with ``start_offsets`` past them or rely on the idle timeout to check for extras).
    """
    return list(iter_topic(config, topic, from_beginning, limit, idle_timeout_s, expected, start_offsets))


def end_offsets(config: str | Mapping[str, Any], topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """True end offset (high-water mark) of each partition of ``topic``; {} if the topic does not exist.

    Snapshot these before producing, then ``read_topic(..., start_offsets=snapshot)`` reads only what came
    after, without trusting ListOffsets(LATEST), which tansu gets wrong.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**{**client_config(config), **CONSUMER_OPTIONS})
    try:
        partitions = _wait_for_partitions(consumer, topic, time.monotonic(), min(timeout_s, 1.0))
        if not partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        return {tp.partition: offset for tp, offset in _true_end_offsets(consumer, tps, timeout_s).items()}
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------------- internals


def _wait_for_partitions(consumer: Any, topic: str, since: float, idle_timeout_s: float | None) -> set[int]:
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if idle_timeout_s is not None and time.monotonic() - since > idle_timeout_s:
            return set()
        time.sleep(0.1)


def _true_end_offsets(consumer: Any, tps: list[Any], timeout_s: float = 10.0) -> dict[Any, int]:
    """High-water mark of each assigned partition, learned from fetch responses.

    tansu's ListOffsets(LATEST) answers the first offset of the last batch + 1, which is never past the true
    end: fetching from there returns the high-water mark. On a correct broker this costs one empty fetch.
    """
    consumer.seek_to_end(*tps)
    ends: dict[Any, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(ends) < len(tps) and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)  # records fetched here are discarded; we seek back to the end below
        for tp in tps:
            if tp not in ends:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = int(highwater)
    for tp in tps:
        if tp not in ends:
            ends[tp] = int(consumer.position(tp))
            logger.warning("no fetch answer for %s within %g s; using ListOffsets position %d", tp, timeout_s, ends[tp])
    return ends
