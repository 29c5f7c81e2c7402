"""Per-session state as bytes with an explicit, versioned layout (the value of the ``sessions`` table)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

LAYOUT_VERSION = 1
NO_OFFSET = -1
NO_EVENT = 0
# layout, state_rows, state_cols, last_offset, last_event_hash, last_timestamp, event_count, known_count,
# ring_len, version_len, top_len; then version bytes, ring (u64), last top-k (u32 item hashes, f32 scores), model
# state (state_rows * state_cols f32; written as one row, older states as n_layers rows of a GRU4REC hidden state).
_HEADER = struct.Struct("<BBHqQdIIHBB")
MAX_VERSION_BYTES = 64
MAX_STATE_SIZE = 0xFFFF


def item_hash(item_id: str) -> int:
    """64-bit hash of an item id: the ring stores these, so it outlives item index changes between models."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def item_hash32(item_id: str) -> int:
    """32-bit item hash for the remembered top-k (a false match needs a collision among 20 items: ~5e-9)."""
    return item_hash(item_id) & 0xFFFFFFFF


def event_hash(event_id: str, item_id: str, timestamp: float) -> int:
    """Non-zero 64-bit hash of a click's identity: a re-sent click repeats all three; a reused id does not."""
    return item_hash(f"{event_id}\x1f{item_id}\x1f{timestamp!r}") or 1


class StateDecodeError(ValueError):
    """Bytes in the sessions table are not a session state of a known layout."""


@dataclass
class SessionState:
    """What the worker keeps per session.

    ``model_state`` belongs to ``model_version`` (its family decides what the floats mean); ``ring`` holds hashes
    of the last clicked items (oldest first, known and unknown to the model alike) so a new model version, of
    any family, can recompute the state.
    """

    model_version: str
    model_state: np.ndarray  # (state_size,) float32
    ring: list[int] = field(default_factory=list)  # item hashes, oldest first
    last_offset: int = NO_OFFSET  # source offset of the last applied click (its partition is fixed by the key)
    last_event_hash: int = NO_EVENT  # event_hash of the last applied click, if it had an event id
    last_timestamp: float = 0.0  # event time of the last applied click
    event_count: int = 0  # clicks applied (known and unknown items)
    known_count: int = 0  # clicks that moved the model state under model_version
    last_top: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # (k,) item_hash32, best first
    last_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (k,) their scores

    def encode(self) -> bytes:
        version = self.model_version.encode()
        if len(version) > MAX_VERSION_BYTES:
            raise ValueError("model version longer than 64 bytes")
        if self.model_state.size > MAX_STATE_SIZE:
            raise ValueError(f"model state of {self.model_state.size} values exceeds {MAX_STATE_SIZE}")
        header = _HEADER.pack(
            LAYOUT_VERSION, 1, self.model_state.size, self.last_offset, self.last_event_hash, self.last_timestamp,
            min(self.event_count, 0xFFFFFFFF), min(self.known_count, 0xFFFFFFFF), len(self.ring), len(version),
            len(self.last_top),
        )
        return b"".join((
            header,
            version,
            np.asarray(self.ring, dtype="<u8").tobytes(),
            np.asarray(self.last_top, dtype="<u4").tobytes(),
            np.asarray(self.last_scores, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.model_state, dtype="<f4").tobytes(),
        ))

    @classmethod
    def decode(cls, data: bytes) -> SessionState:
        if len(data) < _HEADER.size:
            raise StateDecodeError(f"session state too short ({len(data)} bytes)")
        (layout, state_rows, state_cols, last_offset, last_event_hash, last_timestamp, event_count, known_count,
         ring_len, version_len, top_len) = _HEADER.unpack_from(data)
        if layout != LAYOUT_VERSION:
            raise StateDecodeError(f"unknown session state layout {layout}")
        expected = _HEADER.size + version_len + 8 * ring_len + 8 * top_len + 4 * state_rows * state_cols
        if len(data) != expected:
            raise StateDecodeError(f"session state has {len(data)} bytes, layout says {expected}")
        position = _HEADER.size
        version = data[position : position + version_len].decode()
        position += version_len
        ring = np.frombuffer(data, dtype="<u8", count=ring_len, offset=position).tolist()
        position += 8 * ring_len
        last_top = np.frombuffer(data, dtype="<u4", count=top_len, offset=position).copy()
        position += 4 * top_len
        last_scores = np.frombuffer(data, dtype="<f4", count=top_len, offset=position).copy()
        position += 4 * top_len
        model_state = np.frombuffer(data, dtype="<f4", offset=position).copy()
        return cls(version, model_state, ring, last_offset, last_event_hash, last_timestamp, event_count, known_count,
                   last_top, last_scores)


_LAST_TIMESTAMP = struct.Struct("<d")
_LAST_TIMESTAMP_AT = 20  # after layout, state_rows, state_cols, last_offset, last_event_hash


def last_timestamp_of(data: bytes) -> float:
    """Event time of a stored session's last click, read without decoding the rest (for expiry scans)."""
    if len(data) < _HEADER.size or data[0] != LAYOUT_VERSION:
        raise StateDecodeError("not a session state")
    return float(_LAST_TIMESTAMP.unpack_from(data, _LAST_TIMESTAMP_AT)[0])
