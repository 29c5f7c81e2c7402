"""Reads and writes of the ``sessions`` table with an explicit partition: RocksDB directly, changelog records
batched per partition through the shared producer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from faust.types import TP

from stream_worker.batch_sender import BatchSender
from stream_worker.progress import PROGRESS_KEY, decode_progress, encode_progress

log = logging.getLogger(__name__)


class SessionStore:
    """The Faust table's RocksDB store and changelog, driven per partition.

    Faust's ``table[key] = value`` needs the current event for its partition and queues one changelog
    message per write through a buffer that stalls the stream every 100 messages; at batch rates that is
    the worker's bottleneck. This writes the same bytes to the same places: the partition's RocksDB
    database, and the changelog topic's same partition, whose delivery advances the persisted offset, as
    Faust's own changelog callback does, so Faust's recovery reads it back unchanged. Changelog records are
    sent by the caller's ``BatchSender.flush``; Faust's commit flushes the producer before committing the
    input offsets, so no committed click is missing from the changelog.
    """

    def __init__(self, table: Any, sender: BatchSender) -> None:
        self.table = table
        self.sender = sender
        self._applied: dict[int, int] = {}  # progress written by this worker, maybe not in the changelog yet
        sender.on_delivered(self.changelog_topic, self._persisted)

    @property
    def _store(self) -> Any:
        return self.table.data  # faust.stores.rocksdb.Store

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic_name)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._store._db_for_partition(partition).get(key)
        return bytes(value) if value is not None else None

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Write (or delete, with None) locally and queue the change for the changelog."""
        store = self._store
        db = store._db_for_partition(partition)
        if value is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            db.put(key, value)
            store._key_index[key] = partition
        self.sender.add(self.changelog_topic, key, value, partition)

    def get_progress(self, partition: int) -> int | None:
        """The partition's next clicks offset to apply; None before its first batch (or if unreadable)."""
        if partition in self._applied:
            return self._applied[partition]
        raw = self.get(partition, PROGRESS_KEY)
        if raw is None:
            return None
        try:
            return decode_progress(raw)
        except ValueError as error:
            log.warning("partition %d: progress record unreadable (%s); starting from the delivered clicks",
                        partition, error)
            return None

    def put_progress(self, partition: int, next_offset: int) -> None:
        """Queue the progress for the changelog after the batch's session states; RocksDB gets it only once the
        changelog has it, so a local progress never covers a state the changelog lacks (a restart after a crash
        then re-reads those clicks and sends their states again: see ``stream_worker/app.py``)."""
        self._applied[partition] = next_offset
        raw = encode_progress(next_offset)
        self.sender.add(self.changelog_topic, PROGRESS_KEY, raw, partition,
                        on_delivered=lambda: self._write_local_progress(partition, raw))

    def forget_applied(self) -> None:
        """After a rebalance, read progress from RocksDB again (recovery may have changed it)."""
        self._applied.clear()

    def _write_local_progress(self, partition: int, raw: bytes) -> None:
        db = self._store._dbs.get(partition)
        if db is not None:  # (the partition may have been revoked meanwhile; its new owner has the changelog)
            db.put(PROGRESS_KEY, raw)

    def _persisted(self, topic: str, partition: int, base_offset: int, count: int) -> None:
        self._store.set_persisted_offset(TP(topic, partition), base_offset + count - 1)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every session (key, value) stored for ``partition`` on this worker."""
        db = self._store._dbs.get(partition)
        if db is None:
            return iter(())
        return ((key, value) for key, value in self._store._visible_items(db) if key != PROGRESS_KEY)

    def size(self) -> int:
        """Approximate number of sessions held (RocksDB's key estimate over this worker's partitions; it also
        counts the one progress record per partition)."""
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in self._store._dbs.values())
