"""Ranking metrics for next-item prediction: ranks with ties counted against the model, Recall/MRR/NDCG@k."""

from __future__ import annotations

import numpy as np

DEFAULT_CUTOFFS: tuple[int, ...] = (1, 5, 10, 20)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target among all items; every other item scoring >= the target ranks above it.

    scores: (batch, n_items); targets: (batch,) item indices. Returns (batch,) int64.
    A NaN target score ranks last.
    """
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]  # (batch, 1)
    ranks = (scores >= target_scores).sum(axis=1)  # counts the target itself once
    ranks[np.isnan(target_scores[:, 0])] = scores.shape[1]
    return ranks.astype(np.int64)


def sampled_ranks(scores: np.ndarray, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """1-based rank of each target among itself and its sampled negatives; negatives scoring >= it rank above.

    scores: (batch, n_items); targets: (batch,); negatives: (batch, n) item indices, -1 where a row has fewer.
    Returns (batch,) int64. A NaN target score ranks last among its row's candidates.
    """
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]  # (batch, 1)
    present = negatives >= 0
    negative_scores = scores[rows[:, None], np.where(present, negatives, 0)]  # (batch, n)
    ranks = 1 + ((negative_scores >= target_scores) & present).sum(axis=1)
    last = np.isnan(target_scores[:, 0])
    ranks[last] = 1 + present[last].sum(axis=1)
    return ranks.astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """Recall@k, MRR@k and NDCG@k (means over predictions) for each cutoff, plus the prediction count."""
    ranks = np.asarray(ranks, dtype=np.float64)
    result: dict[str, float] = {"n_predictions": float(len(ranks))}
    for k in cutoffs:
        hit = ranks <= k
        n = max(len(ranks), 1)
        result[f"recall@{k}"] = float(hit.sum() / n)
        result[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).sum() / n)
        result[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).sum() / n)
    return result
