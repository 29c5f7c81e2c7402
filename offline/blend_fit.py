"""Blend weights fitted on held-out sessions: every weighting of a grid scored at once, the prior kept unless
the held-out clicks clearly prefer another."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from modelkit.blend import comparable_scores
from modelkit.family import SessionModel
from offline.metrics import metrics_from_ranks, target_ranks
from offline.session_arrays import SessionArrays

CUTOFF = 20  # weights are chosen on Recall@20 and MRR@20
SESSIONS_PER_CHUNK = 256  # held-out sessions stepped together (memory: members x chunk x n_items floats)


def weight_grid(n_members: int, step: float) -> np.ndarray:  # (n_candidates, n_members)
    """Every weighting whose weights are multiples of ``step`` and sum to 1 (single members included).

    >>> weight_grid(2, 0.5)
    array([[0. , 1. ],
           [0.5, 0.5],
           [1. , 0. ]])
    """
    units = round(1 / step)
    if n_members < 1 or units < 1 or abs(units * step - 1) > 1e-9:
        raise ValueError("need at least one member and a step that divides 1")
    rows = [parts for parts in itertools.product(range(units + 1), repeat=n_members) if sum(parts) == units]
    return np.array(rows, dtype=np.float64) / units


def held_out_ranks(models: Sequence[SessionModel], sessions: SessionArrays, candidates: np.ndarray, combine: str,
                   max_predictions: int) -> np.ndarray:  # (n_candidates, n_predictions) int64
    """Rank of every next click of the newest held-out ``sessions`` (whole sessions, up to ``max_predictions``
    clicks) under each weighting of ``candidates`` (n_candidates, n_members), in event order, as
    ``evaluation_ranks`` ranks a ``BlendNumpy`` of these weights: ties count against the target."""
    predictions = np.maximum(sessions.lengths - 1, 0)  # (n_sessions,)
    from_end = np.cumsum(predictions[::-1])  # (n_sessions,) next clicks of the newest k + 1 sessions
    first = sessions.n_sessions - max(int(np.searchsorted(from_end, max_predictions, side="right")), 1)
    base = int(sessions.offsets[first])  # first event scored
    ranks = np.full((len(candidates), sessions.n_events - base), -1, dtype=np.int64)
    weights = (candidates / candidates.sum(axis=1, keepdims=True)).astype(np.float32)  # (n_candidates, n_members)
    for start in range(first, sessions.n_sessions, SESSIONS_PER_CHUNK):
        chunk = np.arange(start, min(start + SESSIONS_PER_CHUNK, sessions.n_sessions))
        lengths = sessions.lengths[chunk]
        states = [model.initial_state(len(chunk)) for model in models]  # each (chunk, state_size)
        for position in range(int(lengths.max(initial=0)) - 1):
            rows = np.flatnonzero(lengths > position + 1)  # sessions with a next click
            current = sessions.offsets[chunk[rows]] + position
            parts = []
            for number, model in enumerate(models):
                states[number][rows] = model.step(states[number][rows], sessions.item_idx[current])
                parts.append(comparable_scores(model.scores(states[number][rows]), model.family, combine))
            targets = sessions.item_idx[current + 1]
            for number, row in enumerate(weights):
                blended = np.zeros_like(parts[0])  # (batch, n_items), summed as BlendNumpy sums it
                for weight, part in zip(row, parts, strict=True):
                    if weight > 0:
                        blended += weight * part
                ranks[number, current + 1 - base] = target_ranks(blended, targets)
    return ranks[:, ranks[0] >= 0]


@dataclass(frozen=True)
class WeightFit:
    """The chosen weights and the held-out figures behind the choice (Recall@20, MRR@20)."""

    weights: tuple[float, ...]  # one per candidate column (fit_weights: per member), summing to 1
    recall: float
    mrr: float
    prior_recall: float
    prior_mrr: float
    best_member_recall: float  # the best single member's, each metric on its own
    best_member_mrr: float
    n_predictions: int

    def metrics(self) -> dict[str, float]:
        """The figures a manifest records."""
        return {"blend_fit_recall@20": self.recall, "blend_fit_mrr@20": self.mrr,
                "blend_prior_recall@20": self.prior_recall, "blend_prior_mrr@20": self.prior_mrr,
                "blend_fit_predictions": float(self.n_predictions)}


def choose_weights(ranks: np.ndarray, candidates: np.ndarray, prior: Sequence[float], tolerance: float) -> WeightFit:
    """Pick a weighting from the held-out ``ranks`` (n_candidates, n_predictions) of ``candidates``; the last
    candidate must be the ``prior``.

    A weighting's margin is the smaller of its gains over the best single member (a one-hot candidate) in
    Recall@20 and in MRR@20. Among the weightings within ``tolerance`` (relative) of the best margin's
    figures on both metrics, the one closest to the prior (L1) wins: the prior stays unless the held-out
    clicks show a clearly better blend, and a blend no better than its best member gives way to that member.
    """
    prior_weights = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    if candidates.shape[0] != ranks.shape[0] or not np.allclose(candidates[-1], prior_weights):
        raise ValueError("one rank row per candidate, the prior last")
    figures = [metrics_from_ranks(row, (CUTOFF,)) for row in ranks]
    recall = np.array([f[f"recall@{CUTOFF}"] for f in figures])  # (n_candidates,)
    mrr = np.array([f[f"mrr@{CUTOFF}"] for f in figures])
    single = np.isclose(candidates.max(axis=1), 1.0)
    if not single.any():
        raise ValueError("the candidates must hold every member alone")
    margin = np.minimum(recall - recall[single].max(), mrr - mrr[single].max())
    best = int(np.argmax(margin))
    near = np.flatnonzero((recall >= recall[best] * (1 - tolerance)) & (mrr >= mrr[best] * (1 - tolerance)))
    distance = np.abs(candidates[near] - prior_weights).sum(axis=1)
    chosen = int(near[np.lexsort((-margin[near], distance.round(9)))[0]])
    return WeightFit(tuple(float(w) for w in candidates[chosen]), float(recall[chosen]), float(mrr[chosen]),
                     float(recall[-1]), float(mrr[-1]), float(recall[single].max()), float(mrr[single].max()),
                     int(ranks.shape[1]))


def fit_weights(models: Sequence[SessionModel], held_out: SessionArrays, prior: Sequence[float],
                families: Sequence[int], combine: str, step: float, tolerance: float, max_predictions: int
                ) -> WeightFit:
    """Blend weights for ``models`` (trained without ``held_out``) chosen on the next clicks of ``held_out``.

    The grid of ``step`` (plus the prior) weighs families, not members: ``families`` numbers each member's family
    (0, 1, ...), and a family's runs (seeds) share its weight equally, so the grid stays small however many runs
    there are. ``choose_weights`` picks among the family weightings; the result is per member.
    """
    family_of = np.asarray(families, dtype=np.int64)  # (n_members,)
    runs = np.bincount(family_of)  # (n_families,) members per family
    prior_weights = np.bincount(family_of, weights=np.asarray(prior, dtype=np.float64)).astype(np.float64)
    prior_families = prior_weights / prior_weights.sum()  # (n_families,)
    candidates = np.vstack([weight_grid(len(runs), step), prior_families])  # (n_candidates, n_families)
    ranks = held_out_ranks(models, held_out, candidates[:, family_of] / runs[family_of], combine, max_predictions)
    if ranks.shape[1] == 0:
        raise ValueError("the held-out sessions have no next click to fit blend weights on")
    fit = choose_weights(ranks, candidates, prior_families.tolist(), tolerance)
    chosen = np.asarray(fit.weights)[family_of] / runs[family_of]  # (n_members,)
    return replace(fit, weights=tuple(float(weight) for weight in chosen))
