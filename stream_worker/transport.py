"""Faust's aiokafka transport with a configurable fetch wait and end offsets verified by a fetch (tansu bug)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Consumer thread that (1) waits at most ``fetch_max_wait_ms`` for a fetch (Faust hard-codes 1500 ms) and
    (2) confirms ListOffsets end offsets by reading the last records.

    Tansu answers ListOffsets(LATEST) with the first offset of the last record batch + 1, so table recovery
    would stop early or fail the consistency check on every warm restart. On Apache Kafka the check only
    re-reads one record per partition.
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 1500))
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = dict(await super()._highwaters(partitions))
        return await self._verified_ends(reported)

    async def _verified_ends(self, reported: dict[TP, int]) -> dict[TP, int]:
        probe_tps = [tp for tp, end in reported.items() if end and end > 0]
        if not probe_tps:
            return reported
        conf = self.app.conf
        transport = cast(Any, self.transport)
        probe = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )
        await probe.start()
        try:
            probe.assign(probe_tps)
            for tp in probe_tps:
                probe.seek(tp, reported[tp] - 1)
            ends = dict(reported)
            pending = set(probe_tps)
            for _ in range(50):  # each round reads what is there; the fetch high-water mark is right
                batches = await probe.getmany(*pending, timeout_ms=100)
                for tp, records in batches.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                for tp in list(pending):
                    highwater = probe.highwater(tp)
                    if highwater is not None and await probe.position(tp) >= highwater:
                        ends[tp] = max(ends[tp], highwater)
                        pending.discard(tp)
                if not pending:
                    break
            corrected = {tp: (reported[tp], ends[tp]) for tp in probe_tps if ends[tp] != reported[tp]}
            if corrected:
                log.info("end offsets corrected by fetch (reported, real): %s", corrected)
            return ends
        finally:
            await probe.stop()


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer using ConsumerThread."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport using Consumer."""

    Consumer = Consumer
