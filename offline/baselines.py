"""Session-based next-item baselines (popularity, sequential rules, V-SKNN) implementing SessionScorer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from modelkit.vsknn import VSKNNNumpy
from offline.session_arrays import SessionArrays
from offline.vsknn_train import session_index

SR_WEIGHTINGS = ("div", "linear", "same")


def _check_train(train: SessionArrays, n_items: int) -> None:
    if train.n_events and (train.item_idx.min() < 0 or train.item_idx.max() >= n_items):
        raise ValueError(f"training item indices must lie in 0..{n_items - 1} (filter UNKNOWN_ITEM first)")


def _check_rows(rows: np.ndarray, items: np.ndarray, n_sessions: int, n_items: int) -> None:
    if len(rows) != len(items):
        raise ValueError("rows and items must have the same length")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_sessions):
        raise IndexError(f"session rows must lie in 0..{n_sessions - 1}; call reset() first")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"items must lie in 0..{n_items - 1}")


def sr_gap_weight(gap: int, weighting: str) -> float:
    """Weight of a rule between positions ``gap`` apart (gap >= 1)."""
    if weighting == "div":
        return 1.0 / gap
    if weighting == "linear":
        return max(1.0 - 0.1 * (gap - 1), 0.0)
    if weighting == "same":
        return 1.0
    raise ValueError(f"unknown SR weighting {weighting!r}; expected one of {SR_WEIGHTINGS}")


class PopularityScorer:
    """Scores every item by its training click count, whatever the session (equal counts stay tied)."""

    def __init__(self, train: SessionArrays, n_items: int) -> None:
        _check_train(train, n_items)
        self.name = "pop"
        self.n_items = n_items
        self.counts = np.bincount(train.item_idx, minlength=n_items).astype(np.float64)  # (n_items,)
        self._n_sessions = 0

    def reset(self, n_sessions: int) -> None:
        self._n_sessions = n_sessions

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
        _check_rows(rows, items, self._n_sessions, self.n_items)
        return np.tile(self.counts, (len(rows), 1))


class SequentialRulesScorer:
    """Sequential rules (Ludewig & Jannach 2018): weighted counts of item_i -> item_j with j after i.

    Every pair of positions i < j of a training session with j - i <= ``steps`` adds w(j - i) to rule
    (item_i -> item_j), pairs of equal items included. ``pruning`` > 0 keeps, per source item, the rules
    whose weight reaches the ``pruning``-th largest one (rules tied at the cut are all kept, so a row may
    keep a few more). The next click is scored by the rules of the session's last item; items with no
    rule score 0 (tied). The defaults were the best of a small grid on rsc15-100k (bench/baselines_rsc15.py).
    """

    def __init__(
        self,
        train: SessionArrays,
        n_items: int,
        steps: int = 10,
        weighting: str = "div",
        pruning: int = 20,
    ) -> None:
        _check_train(train, n_items)
        if steps < 1:
            raise ValueError("steps must be >= 1")
        if pruning < 0:
            raise ValueError("pruning must be >= 0 (0 keeps all rules)")
        sr_gap_weight(1, weighting)  # validates the name
        self.name = "sr"
        self.n_items = n_items
        self.steps = steps
        self.weighting = weighting
        self.pruning = pruning
        self.rules = self._build_rules(train)  # (n_items, n_items) CSR, row = source item
        self._last = np.zeros(0, np.int64)

    def _build_rules(self, train: SessionArrays) -> sp.csr_matrix:
        items = train.item_idx.astype(np.int64)
        sessions = train.event_sessions
        sources, targets, weights = [], [], []
        for gap in range(1, self.steps + 1):
            weight = sr_gap_weight(gap, self.weighting)
            if gap >= len(items) or weight <= 0.0:
                continue
            same_session = sessions[:-gap] == sessions[gap:]
            sources.append(items[:-gap][same_session])
            targets.append(items[gap:][same_session])
            weights.append(np.full(int(same_session.sum()), weight))
        n = self.n_items
        if not sources:
            return sp.csr_matrix((n, n), dtype=np.float64)
        rules = sp.coo_matrix(
            (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))), shape=(n, n)
        ).tocsr()  # duplicates summed
        if self.pruning:
            rules = _prune_rows(rules, self.pruning)
        return rules

    def reset(self, n_sessions: int) -> None:
        self._last = np.full(n_sessions, -1, dtype=np.int64)

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
        _check_rows(rows, items, len(self._last), self.n_items)
        self._last[rows] = items
        return self.rules[items].toarray()


def _prune_rows(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Per row, keep the entries >= the row's ``keep``-th largest value (ties at the cut kept)."""
    indptr, data = matrix.indptr, matrix.data
    mask = np.ones(len(data), dtype=bool)
    for row in np.flatnonzero(np.diff(indptr) > keep):
        start, stop = indptr[row], indptr[row + 1]
        values = data[start:stop]
        threshold = np.partition(values, len(values) - keep)[len(values) - keep]
        mask[start:stop] = values >= threshold
    row_of = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    pruned = sp.csr_matrix((data[mask], (row_of[mask], matrix.indices[mask])), shape=matrix.shape)
    pruned.sort_indices()
    return pruned


class VSKNNScorer:
    """Vector-multiplication session kNN, V-SKNN (Ludewig & Jannach 2018), over whole prefixes.

    The scoring is ``modelkit.vsknn.VSKNNNumpy`` (the served kNN member of a blend), over an index of
    ``train``; ``idf`` multiplies an item's score by 1 + log(n_train_sessions / sessions containing the item).
    Defaults were picked by MRR@20 on an inner time split of rsc15-100k (bench/baselines_rsc15.py --inner).
    """

    def __init__(
        self,
        train: SessionArrays,
        n_items: int,
        k: int = 100,
        sample_size: int = 1000,
        weighting: str = "div",
        similarity: str = "cosine",
        idf: bool = True,
    ) -> None:
        _check_train(train, n_items)
        self.name = "vsknn"
        self.n_items = n_items
        index = session_index(train, n_items, idf)
        self.model = VSKNNNumpy(index, k, sample_size, weighting, similarity, max_len=1)  # (whole prefixes here)
        self._prefixes: list[list[int]] = []

    def reset(self, n_sessions: int) -> None:
        self._prefixes = [[] for _ in range(n_sessions)]

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
        _check_rows(rows, items, len(self._prefixes), self.n_items)
        for row, item in zip(rows.tolist(), items.tolist(), strict=True):
            self._prefixes[row].append(item)
        return self.score_prefixes([self._prefixes[row] for row in rows.tolist()])

    def neighbours(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Similarity of each prefix to its selected neighbours, (len(prefixes), n_train_sessions) CSR."""
        return self.model.neighbours(prefixes)

    def score_prefixes(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-click scores of all items for each prefix, (len(prefixes), n_items) float64."""
        return self.model.score_prefixes(prefixes)
