"""Ceiling for bench/stream_throughput.py: a raw aiokafka pass-through, no Faust. It reads every partition of the
source topic (getmany, no consumer group), sends each record to the destination topic with the same key and value,
awaits the acknowledgements of the whole batch, and repeats until ``--expected`` records went through.

The clients are configured as the worker's: fetch wait ``STREAMREC_FETCH_MAX_WAIT_MS``, acks=all, linger
``STREAMREC_PRODUCER_LINGER_MS``, at most ``STREAMREC_MAX_BATCH_RECORDS`` records per getmany."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiokafka
from aiokafka.structs import TopicPartition

from stream_worker.settings import WorkerSettings


async def forward(settings: WorkerSettings, source: str, destination: str, expected: int, timeout_s: float) -> int:
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_list(), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_records=settings.max_batch_records,
    )
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=settings.bootstrap_list(), acks="all",
                                         linger_ms=settings.producer_linger_ms)
    await consumer.start()
    await producer.start()
    forwarded = 0
    try:
        deadline = time.monotonic() + timeout_s
        partitions = await producer.partitions_for(source)  # (the bench creates the topic before)
        tps = [TopicPartition(source, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while forwarded < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            deliveries = [await producer.send(destination, value=record.value, key=record.key)
                          for records in batches.values() for record in records]
            await asyncio.gather(*deliveries)
            forwarded += len(deliveries)
    finally:
        await producer.stop()
        await consumer.stop()
    return forwarded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True)
    parser.add_argument("--destination", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    settings = WorkerSettings()
    forwarded = asyncio.run(forward(settings, args.source, args.destination, args.expected, args.timeout))
    print(f"forwarded {forwarded} records")


if __name__ == "__main__":
    main()
