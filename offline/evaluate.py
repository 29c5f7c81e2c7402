"""Next-click evaluation of any session scorer over whole test sessions, against the full catalogue."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from modelkit.family import SessionModel
from offline.metrics import DEFAULT_CUTOFFS, metrics_from_ranks, target_ranks
from offline.session_arrays import SessionArrays


class SessionScorer(Protocol):
    """Scores every catalogue item as the next click of many sessions at once.

    ``reset(n)`` starts ``n`` empty sessions (rows 0..n-1). ``step(rows, items)`` appends ``items[i]`` to
    session ``rows[i]`` and returns the scores of all items for each of those sessions' next click,
    shape (len(rows), n_items). Higher is better.
    """

    name: str
    n_items: int

    def reset(self, n_sessions: int) -> None: ...

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray: ...


class ModelScorer:
    """A ``SessionScorer`` over any model family's ``SessionModel``: one state row per evaluated session."""

    def __init__(self, model: SessionModel) -> None:
        self.model = model
        self.name = model.family
        self.n_items = model.n_items
        self.states = model.initial_state(0)  # (n_sessions, state_size)

    def reset(self, n_sessions: int) -> None:
        self.states = self.model.initial_state(n_sessions)

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        stepped = self.model.step(self.states[rows], items)  # (len(rows), state_size)
        self.states[rows] = stepped
        return self.model.scores(stepped)


def evaluation_ranks(scorer: SessionScorer, test: SessionArrays, sessions_per_chunk: int = 1024) -> np.ndarray:
    """Rank of every next click of every test session given its prefix; (n_events,) with -1 at session starts.

    Sessions are processed ``sessions_per_chunk`` at a time, position by position, so each scorer call
    is batched across sessions. Items must already be known to the scorer (no UNKNOWN_ITEM).
    """
    if test.n_events and (test.item_idx.min() < 0 or test.item_idx.max() >= scorer.n_items):
        raise ValueError("test events contain items unknown to the model; filter them first")
    ranks = np.full(test.n_events, -1, dtype=np.int64)
    lengths = test.lengths
    for first in range(0, test.n_sessions, sessions_per_chunk):
        chunk = np.arange(first, min(first + sessions_per_chunk, test.n_sessions))
        scorer.reset(len(chunk))
        starts = test.offsets[chunk]
        for position in range(int(lengths[chunk].max(initial=0)) - 1):
            active = lengths[chunk] > position + 1
            rows = np.flatnonzero(active)
            current = starts[rows] + position
            scores = scorer.step(rows, test.item_idx[current])  # (len(rows), n_items)
            ranks[current + 1] = target_ranks(scores, test.item_idx[current + 1])
    return ranks


def evaluate(
    scorer: SessionScorer, test: SessionArrays, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> dict[str, float]:
    """Recall@k, MRR@k and NDCG@k of ``scorer`` on every next click of ``test``."""
    ranks = evaluation_ranks(scorer, test)
    return metrics_from_ranks(ranks[ranks > 0], cutoffs)
