"""Reads given offset ranges of one partition straight from the broker (clicks the group consumer did not deliver)."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiokafka
from aiokafka.structs import TopicPartition

from stream_worker.record import Record

log = logging.getLogger(__name__)


class GapReader:
    """A group-less aiokafka consumer, started on first use and kept for the next gap."""

    def __init__(self, bootstrap_servers: list[str], timeout_s: float = 30.0, **client_options: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self.client_options = client_options  # TLS / SASL, as the worker's own clients
        self._consumer: aiokafka.AIOKafkaConsumer | None = None

    async def _started(self) -> aiokafka.AIOKafkaConsumer:
        if self._consumer is None:
            consumer = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", fetch_max_wait_ms=50, **self.client_options,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(self, topic: str, partition: int, first: int, stop: int) -> list[Record]:
        """Records with ``first <= offset < stop``; offsets the broker no longer has (retention) are skipped
        with a warning. TimeoutError when the range cannot be read within ``timeout_s``."""
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        earliest = (await consumer.beginning_offsets([tp]))[tp]
        if earliest > first:
            log.warning("%s[%d]: offsets %d..%d were deleted by the broker before they were processed",
                        topic, partition, first, min(earliest, stop) - 1)
        position = max(first, earliest)
        consumer.seek(tp, position)
        records: list[Record] = []
        deadline = time.monotonic() + self.timeout_s
        while position < stop:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}]: could not read offsets {position}..{stop - 1}")
            fetched = (await consumer.getmany(tp, timeout_ms=200, max_records=stop - position)).get(tp, [])
            records.extend(Record(message.key, message.value, partition, message.offset)
                           for message in fetched if message.offset < stop)
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if not fetched and highwater is not None and highwater <= position:
                break  # the partition ends before ``stop``
        return records

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
