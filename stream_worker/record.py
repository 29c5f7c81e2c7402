"""One clicks message as the worker reads it: raw key and value bytes, partition and offset."""

from __future__ import annotations

from typing import NamedTuple


class Record(NamedTuple):
    """One message as read: raw key and value bytes, partition and offset."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
