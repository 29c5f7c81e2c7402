"""BatchSender on the embedded broker: records land where asked, in order, each delivery callback runs once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiokafka

from stream_worker.batch_sender import BatchSender
from stream_worker.broker import create_topics
from stream_worker.tail import read_topic


def test_records_in_order_per_partition_and_one_callback_per_delivered_record(broker: Any) -> None:
    topic = f"sender-{time.monotonic_ns()}"
    create_topics(broker.bootstrap, {topic: 3})
    value = b"x" * 3000  # 200 x 3 KB: several record batches per partition
    delivered: list[tuple[str, int]] = []  # (where, index) in callback order
    batches: list[tuple[int, int, int]] = []  # (partition, base offset, count) from the topic callback

    def note(where: str, n: int) -> Callable[[], None]:
        return lambda: delivered.append((where, n))

    async def send() -> list[Any]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            sender = BatchSender(lambda: producer)
            sender.on_delivered(topic, lambda _t, partition, base, count: batches.append((partition, base, count)))
            sender.add(topic, b"dropped", b"never sent", on_delivered=lambda: delivered.append(("dropped", -1)))
            sender.discard()  # forgets what was added since the last flush
            for n in range(200):
                partition = n % 2
                sender.add(topic, b"p%d" % partition, value + b"%d" % n, partition,
                           on_delivered=note("explicit", n))
            sender.add(topic, b"keyed", b"by key", on_delivered=lambda: delivered.append(("keyed", -1)))
            return list(await asyncio.gather(*await sender.flush()))
        finally:
            await producer.stop()

    results = asyncio.run(send())
    assert len(results) > 3 and sum(count for _, _, count in batches) == 201
    assert sorted(n for where, n in delivered if where == "explicit") == list(range(200))
    assert [n for where, n in delivered if where == "explicit" and n % 2 == 0] == list(range(0, 200, 2))
    assert delivered.count(("keyed", -1)) == 1 and ("dropped", -1) not in delivered
    records = read_topic(broker.bootstrap, topic, expected=201, idle_timeout_s=3)
    by_partition: dict[int, list[bytes]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(record.value or b"")
    for partition in (0, 1):
        explicit = [v for v in by_partition[partition] if v != b"by key"]
        assert explicit == [value + b"%d" % n for n in range(partition, 200, 2)]  # in order
    assert sum(v == b"by key" for vs in by_partition.values() for v in vs) == 1
    assert not any(v == b"never sent" for vs in by_partition.values() for v in vs)
