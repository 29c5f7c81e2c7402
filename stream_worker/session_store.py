"""Reads and writes of the ``sessions`` table with an explicit partition: RocksDB directly, changelog through
the shared producer (one batched send per changed session, no per-key buffer hop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from faust.types import TP


class SessionStore:
    """The Faust table's RocksDB store and changelog, driven per partition.

    Faust's ``table[key] = value`` needs the current event for its partition and queues one changelog
    message per write through a buffer that stalls the stream every 100 messages; at batch rates that is
    the worker's bottleneck. This writes the same bytes to the same places: the partition's RocksDB
    database, and the changelog topic's same partition, whose delivery advances the persisted offset, as
    Faust's own changelog callback does, so Faust's recovery reads it back unchanged.
    """

    def __init__(self, table: Any, producer: Any) -> None:
        self.table = table
        self.producer = producer

    @property
    def _store(self) -> Any:
        return self.table.data  # faust.stores.rocksdb.Store

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic_name)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._store._db_for_partition(partition).get(key)
        return bytes(value) if value is not None else None

    async def put(self, partition: int, key: bytes, value: bytes | None) -> asyncio.Future[Any]:
        """Write (or delete, with None) locally and send the change to the changelog; returns its delivery."""
        store = self._store
        db = store._db_for_partition(partition)
        if value is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            db.put(key, value)
            store._key_index[key] = partition
        delivery = await self.producer.send(self.changelog_topic, key, value, partition, None, None)
        tp = TP(self.changelog_topic, partition)
        delivery.add_done_callback(lambda done: self._persisted(tp, done))
        return delivery  # type: ignore[no-any-return]

    def _persisted(self, tp: TP, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            self._store.set_persisted_offset(tp, done.result().offset)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) stored for ``partition`` on this worker."""
        db = self._store._dbs.get(partition)
        if db is None:
            return iter(())
        return iter(self._store._visible_items(db))

    def size(self) -> int:
        """Approximate number of sessions held (RocksDB's key estimate over this worker's partitions)."""
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in self._store._dbs.values())
