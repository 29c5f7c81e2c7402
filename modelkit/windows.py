"""Session windows: a session's last ``max_len`` item indices plus one, oldest first, 0 for an empty slot."""

from __future__ import annotations

import numpy as np


def empty_windows(n_sessions: int, max_len: int) -> np.ndarray:  # (n_sessions, max_len) float32
    """Windows of sessions with no click yet."""
    return np.zeros((n_sessions, max_len), np.float32)


def append_clicks(windows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Append clicks ``items`` (batch,) to ``windows`` (batch, max_len), dropping the oldest; a new array.

    >>> append_clicks(np.array([[0.0, 0.0, 3.0]]), np.array([1]))  # item 1 is stored as 2
    array([[0., 3., 2.]])
    """
    stepped = np.empty_like(windows)
    stepped[:, :-1] = windows[:, 1:]
    stepped[:, -1] = items + 1
    return stepped
