"""Evaluation of any session scorer over whole test sessions: next-click or last-item, full or sampled ranking."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from modelkit.family import SessionModel
from offline.metrics import DEFAULT_CUTOFFS, metrics_from_ranks, sampled_ranks, target_ranks
from offline.protocols import NEXT_CLICK, EvalProtocol, NegativeSampler
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


def evaluation_ranks(
    scorer: SessionScorer, test: SessionArrays, sessions_per_chunk: int = 1024, protocol: EvalProtocol = NEXT_CLICK
) -> np.ndarray:
    """Rank of every target of ``test`` under ``protocol``; (n_events,) with -1 at events that are no target.

    Targets are every next click given its prefix (next-click) or each session's last event given the rest
    (last-item). Ranks are 1-based among the whole catalogue, or among the target and its sampled negatives,
    ties counted against the target; with ``exclude_seen`` the prefix's items score -inf first. Sessions
    are processed ``sessions_per_chunk`` at a time, position by position, so each scorer call is batched
    across sessions. Items must already be known to the scorer (no UNKNOWN_ITEM).
    """
    if test.n_events and (test.item_idx.min() < 0 or test.item_idx.max() >= scorer.n_items):
        raise ValueError("test events contain items unknown to the model; filter them first")
    ranks = np.full(test.n_events, -1, dtype=np.int64)
    lengths = test.lengths
    last_only = protocol.targets == "last-item"
    for first in range(0, test.n_sessions, sessions_per_chunk):
        stop = min(first + sessions_per_chunk, test.n_sessions)
        chunk_lengths = lengths[first:stop]
        starts = test.offsets[first:stop]
        scorer.reset(stop - first)
        seen = np.zeros((stop - first, scorer.n_items), dtype=bool) if protocol.exclude_seen else None
        sampler = None
        if protocol.sampled:
            sampler = NegativeSampler(test, first, stop, scorer.n_items, protocol.sampled_negatives, protocol.seed)
        for position in range(int(chunk_lengths.max(initial=0)) - 1):
            rows = np.flatnonzero(chunk_lengths > position + 1)
            current = starts[rows] + position
            items = test.item_idx[current]
            scores = scorer.step(rows, items)  # (len(rows), n_items)
            if seen is not None:
                seen[rows, items] = True
            if last_only:
                ends = np.flatnonzero(chunk_lengths[rows] == position + 2)  # the next event is the last
                if not len(ends):
                    continue
                rows, current, scores = rows[ends], current[ends], scores[ends]
            if seen is not None:
                scores = np.where(seen[rows], -np.inf, scores)
            targets = test.item_idx[current + 1]
            if sampler is None:
                ranks[current + 1] = target_ranks(scores, targets)
            else:
                ranks[current + 1] = sampled_ranks(scores, targets, sampler.draw(rows))
    return ranks


def evaluate(
    scorer: SessionScorer,
    test: SessionArrays,
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS,
    protocol: EvalProtocol = NEXT_CLICK,
) -> dict[str, float]:
    """Recall@k (= HR@k, one target at a time), MRR@k and NDCG@k of ``scorer`` on the targets of ``test``."""
    ranks = evaluation_ranks(scorer, test, protocol=protocol)
    return metrics_from_ranks(ranks[ranks > 0], cutoffs)
