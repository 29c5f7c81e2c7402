"""Session-parallel mini-batches (GRU4Rec): what enters each batch; the reset itself is model_tf.reset_hidden."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from offline.session_arrays import SessionArrays


@dataclass(frozen=True)
class SessionParallelBatches:
    """All steps of one epoch of session-parallel training, stacked: row ``t`` is step ``t``.

    Each of the ``batch`` slots holds one session and advances it by one click per step.
    """

    inputs: np.ndarray  # (n_steps, batch) int32 item index of the current click per slot (0 in empty slots)
    targets: np.ndarray  # (n_steps, batch) int32 item index of the next click per slot (0 in empty slots)
    valid: np.ndarray  # (n_steps, batch) bool: the slot holds a session (False once sessions run out)
    starts: np.ndarray  # (n_steps, batch) bool: the slot's session begins at this step; its hidden state is zeroed

    @property
    def n_steps(self) -> int:
        return len(self.inputs)


def session_parallel_batches(data: SessionArrays, batch_size: int) -> SessionParallelBatches:
    """The mini-batches over all sessions of ``data`` in session order (never shuffled), as stacked arrays.

    Sessions are taken in the order of ``data`` (by start time). Each of the ``batch_size`` slots walks one
    session; when it ends, the next unused session takes the slot (slots freed at the same step in slot order)
    and the step marks it in ``starts``. Sessions shorter than 2 clicks give no training pair and are skipped.
    Once no session is left, slots go invalid; the epoch ends when every slot is invalid.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    usable = np.flatnonzero(data.lengths >= 2)
    first_event = data.offsets[usable]  # (n_usable,) first event of each usable session
    n_pairs = data.lengths[usable] - 1  # (n_usable,) steps each session occupies its slot
    # Which slot each session takes and at which step: the slot that frees first (ties: lowest slot).
    slot = np.empty(len(usable), np.int64)
    first_step = np.empty(len(usable), np.int64)
    free = [(0, s) for s in range(batch_size)]  # (step the slot frees up, slot), a heap
    for session, pairs in enumerate(n_pairs.tolist()):
        step, slot[session] = heapq.heappop(free)
        first_step[session] = step
        heapq.heappush(free, (step + pairs, int(slot[session])))
    n_steps = int((first_step + n_pairs).max(initial=0))
    # Every training pair: its session's slot and step, and the event index of its input click.
    session_of_pair = np.repeat(np.arange(len(usable)), n_pairs)  # (n_pairs_total,)
    offset_in_session = np.arange(len(session_of_pair)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    steps = first_step[session_of_pair] + offset_in_session
    slots = slot[session_of_pair]
    events = first_event[session_of_pair] + offset_in_session
    inputs = np.zeros((n_steps, batch_size), np.int32)
    targets = np.zeros((n_steps, batch_size), np.int32)
    valid = np.zeros((n_steps, batch_size), bool)
    starts = np.zeros((n_steps, batch_size), bool)
    inputs[steps, slots] = data.item_idx[events]
    targets[steps, slots] = data.item_idx[events + 1]
    valid[steps, slots] = True
    starts[first_step, slot] = True
    return SessionParallelBatches(inputs, targets, valid, starts)
