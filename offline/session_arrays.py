"""Sessions as flat NumPy arrays: events grouped by session, items as model row indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelkit.item_index import ItemIndex


@dataclass(frozen=True)
class SessionArrays:
    """Events of many sessions, contiguous per session, time-ordered inside and by session start.

    Session ``s`` owns events ``offsets[s]:offsets[s + 1]``.
    """

    item_idx: np.ndarray  # (n_events,) int64, UNKNOWN_ITEM allowed only before filtering
    timestamps: np.ndarray  # (n_events,) float64 seconds since the epoch
    offsets: np.ndarray  # (n_sessions + 1,) int64
    session_ids: np.ndarray  # (n_sessions,) object (str)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.item_idx)

    @property
    def lengths(self) -> np.ndarray:  # (n_sessions,)
        return np.diff(self.offsets)

    @property
    def event_sessions(self) -> np.ndarray:  # (n_events,) int64
        """The session number of every event."""
        return np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.lengths)

    @property
    def start_times(self) -> np.ndarray:  # (n_sessions,)
        return self.timestamps[self.offsets[:-1]]

    def session(self, s: int) -> np.ndarray:
        return self.item_idx[self.offsets[s] : self.offsets[s + 1]]

    @classmethod
    def from_columns(
        cls,
        session_ids: np.ndarray,
        item_ids: np.ndarray,
        timestamps: np.ndarray,
        item_index: ItemIndex,
    ) -> SessionArrays:
        """Group raw event columns into sessions.

        Events inside a session are ordered by time, ties keeping their input order; sessions are ordered
        by their first event's time, ties broken by session id. Items missing from ``item_index`` map to
        UNKNOWN_ITEM (filter them before training or evaluation).
        """
        session_ids = np.asarray(session_ids).astype(str).astype(object)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        n = len(session_ids)
        if not (len(item_ids) == len(timestamps) == n):
            raise ValueError("session_ids, item_ids and timestamps must have the same length")
        if n == 0:
            return cls(
                np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(1, np.int64), np.zeros(0, object)
            )
        codes, uniques = _factorize(session_ids)
        first_time = np.full(len(uniques), np.inf)
        np.minimum.at(first_time, codes, timestamps)
        # Session rank: by first event time, then by id (uniques are sorted, so code order = id order).
        session_rank = np.empty(len(uniques), np.int64)
        session_rank[np.lexsort((np.arange(len(uniques)), first_time))] = np.arange(len(uniques))
        order = np.lexsort((np.arange(n), timestamps, session_rank[codes]))
        sorted_codes = session_rank[codes][order]
        boundaries = np.flatnonzero(np.diff(sorted_codes)) + 1
        offsets = np.concatenate([[0], boundaries, [n]]).astype(np.int64)
        item_idx = item_index.lookup(np.asarray(item_ids)[order])
        return cls(item_idx, timestamps[order], offsets, session_ids[order][offsets[:-1]])


def split_newest(data: SessionArrays, fraction: float) -> tuple[SessionArrays, SessionArrays | None]:
    """(older sessions, the newest ``fraction`` of the sessions by start time); (data, None) when either part
    would have no session of 2 clicks (nothing to train on or to evaluate)."""
    cut = data.n_sessions - int(round(data.n_sessions * fraction))
    long_enough = data.lengths >= 2
    if not (long_enough[:cut].any() and long_enough[cut:].any()):
        return data, None
    first = int(data.offsets[cut])
    older = SessionArrays(data.item_idx[:first], data.timestamps[:first], data.offsets[: cut + 1],
                          data.session_ids[:cut])
    newest = SessionArrays(data.item_idx[first:], data.timestamps[first:], data.offsets[cut:] - first,
                           data.session_ids[cut:])
    return older, newest


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), uniques
