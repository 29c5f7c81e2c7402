"""Session-parallel mini-batches (GRU4Rec): what enters each batch; the reset itself is model_tf.reset_hidden."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from offline.session_arrays import SessionArrays


@dataclass(frozen=True)
class MiniBatch:
    """One step of session-parallel training: each slot holds one session and advances it by one click."""

    inputs: np.ndarray  # (batch,) item index of the current click per slot
    targets: np.ndarray  # (batch,) item index of the next click per slot
    valid: np.ndarray  # (batch,) bool: the slot holds a session (False once sessions run out)
    starts: np.ndarray  # (batch,) bool: the slot's session begins at this step; its hidden state must be zeroed


def session_parallel_batches(data: SessionArrays, batch_size: int) -> Iterator[MiniBatch]:
    """Yield mini-batches over all sessions of ``data`` in session order (never shuffled).

    Sessions are taken in the order of ``data`` (by start time). Each of the ``batch_size`` slots walks one
    session; when it ends, the next unused session takes the slot and the step marks it in ``starts``.
    Sessions shorter than 2 clicks give no training pair and are skipped. Once no session is left, slots go
    invalid; iteration ends when every slot is invalid.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    usable = np.flatnonzero(data.lengths >= 2)
    starts_at = data.offsets[usable]  # (n_usable,) first event of each usable session
    ends_at = data.offsets[usable + 1]  # (n_usable,) one past its last event
    next_session: int = 0
    position = np.zeros(batch_size, np.int64)  # event index of each slot's current click
    end = np.zeros(batch_size, np.int64)
    valid = np.zeros(batch_size, bool)
    starts = np.zeros(batch_size, bool)
    for slot in range(batch_size):
        if next_session < len(usable):
            position[slot], end[slot] = starts_at[next_session], ends_at[next_session]
            valid[slot] = starts[slot] = True
            next_session += 1
    while valid.any():
        current = np.where(valid, position, 0)
        yield MiniBatch(
            inputs=data.item_idx[current],
            targets=data.item_idx[np.where(valid, position + 1, 0)],
            valid=valid.copy(),
            starts=starts.copy(),
        )
        position += 1
        starts[:] = False
        for done in np.flatnonzero(valid & (position + 1 >= end)):  # the slot's session has no pair left
            if next_session < len(usable):
                position[done], end[done] = starts_at[next_session], ends_at[next_session]
                starts[done] = True
                next_session += 1
            else:
                valid[done] = False

