"""Session-based next-item baselines (popularity, sequential rules, V-SKNN) implementing SessionScorer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from offline.session_arrays import SessionArrays

SR_WEIGHTINGS = ("div", "linear", "same")
VSKNN_WEIGHTINGS = ("div", "linear", "same")
VSKNN_SIMILARITIES = ("dot", "cosine")


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


def _event_sessions(train: SessionArrays) -> np.ndarray:
    """Session index of every training event, (n_events,)."""
    return np.repeat(np.arange(train.n_sessions, dtype=np.int64), train.lengths)


def sr_gap_weight(gap: int, weighting: str) -> float:
    """Weight of a rule between positions ``gap`` apart (gap >= 1)."""
    if weighting == "div":
        return 1.0 / gap
    if weighting == "linear":
        return max(1.0 - 0.1 * (gap - 1), 0.0)
    if weighting == "same":
        return 1.0
    raise ValueError(f"unknown SR weighting {weighting!r}; expected one of {SR_WEIGHTINGS}")


def vsknn_position_weights(distance: np.ndarray, weighting: str) -> np.ndarray:
    """Weight of a prefix item ``distance`` clicks before the last one (0 = last click)."""
    distance = np.asarray(distance, dtype=np.float64)
    if weighting == "div":
        return 1.0 / (distance + 1.0)
    if weighting == "linear":
        return np.maximum(1.0 - 0.1 * distance, 0.1)
    if weighting == "same":
        return np.ones_like(distance)
    raise ValueError(f"unknown V-SKNN weighting {weighting!r}; expected one of {VSKNN_WEIGHTINGS}")


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
        sessions = _event_sessions(train)
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
    """Vector-multiplication session kNN, V-SKNN (Ludewig & Jannach 2018).

    The prefix is a vector over items whose weights decay with distance from the last click (an item
    clicked more than once keeps its largest weight). Candidate neighbours are the training sessions that
    share an item with the prefix, cut to the ``sample_size`` most recent by last click (0 = no cut).
    Similarity is the dot product of the prefix vector with the neighbour's binary item vector (``cosine``
    divides by sqrt(|prefix items| * |neighbour items|)). The top ``k`` neighbours by similarity (equal
    similarities at the cut: the more recent session first) vote for their items with their similarity;
    ``idf`` multiplies an item's score by 1 + log(n_train_sessions / sessions containing the item).

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
        if k < 1:
            raise ValueError("k must be >= 1")
        if sample_size < 0:
            raise ValueError("sample_size must be >= 0 (0 uses every candidate)")
        if similarity not in VSKNN_SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; expected one of {VSKNN_SIMILARITIES}")
        vsknn_position_weights(np.zeros(1), weighting)  # validates the name
        self.name = "vsknn"
        self.n_items = n_items
        self.k = k
        self.sample_size = sample_size
        self.weighting = weighting
        self.similarity = similarity
        self.idf = idf

        n_sessions = train.n_sessions
        events = _event_sessions(train)
        session_items = sp.csr_matrix(
            (np.ones(train.n_events), (events, train.item_idx)), shape=(n_sessions, n_items)
        )
        session_items.sum_duplicates()
        session_items.data[:] = 1.0
        self.session_items = session_items  # (n_train_sessions, n_items) binary CSR
        self.item_sessions = session_items.T.tocsr()  # (n_items, n_train_sessions): item -> sessions
        self.session_sizes = np.diff(session_items.indptr).astype(np.float64)  # distinct items per session

        last_time = np.full(n_sessions, -np.inf)
        np.maximum.at(last_time, events, train.timestamps)
        self.last_time = last_time  # (n_train_sessions,)
        # Recency rank: larger = more recent; equal last-click times ranked by session order.
        recency = np.empty(n_sessions, dtype=np.int64)
        recency[np.lexsort((np.arange(n_sessions), last_time))] = np.arange(n_sessions)
        self.recency = recency

        item_df = np.diff(self.item_sessions.indptr).astype(np.float64)
        idf_values = np.where(item_df > 0, np.log(max(n_sessions, 1) / np.maximum(item_df, 1.0)), 0.0)
        self.item_factor = (1.0 + idf_values) if idf else None  # (n_items,) or None

        self._prefixes: list[list[int]] = []

    def reset(self, n_sessions: int) -> None:
        self._prefixes = [[] for _ in range(n_sessions)]

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
        _check_rows(rows, items, len(self._prefixes), self.n_items)
        for row, item in zip(rows.tolist(), items.tolist(), strict=True):
            self._prefixes[row].append(item)
        return self.score_prefixes([self._prefixes[row] for row in rows.tolist()])

    def prefix_matrix(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Position-weighted prefix vectors, (len(prefixes), n_items) CSR."""
        lengths = np.fromiter((len(p) for p in prefixes), dtype=np.int64, count=len(prefixes))
        total = int(lengths.sum())
        items = np.fromiter((i for p in prefixes for i in p), dtype=np.int64, count=total)
        row_of = np.repeat(np.arange(len(prefixes), dtype=np.int64), lengths)
        distance = np.cumsum(lengths)[row_of] - 1 - np.arange(total)
        # Weights never grow with distance, so a repeated item keeps its most recent (smallest) distance.
        order = np.lexsort((distance, items, row_of))
        first = np.ones(total, dtype=bool)
        first[1:] = (row_of[order][1:] != row_of[order][:-1]) | (items[order][1:] != items[order][:-1])
        keep = order[first]
        weights = vsknn_position_weights(distance[keep], self.weighting)
        return sp.csr_matrix(
            (weights, (row_of[keep], items[keep])), shape=(len(prefixes), self.n_items), dtype=np.float64
        )

    def neighbours(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Similarity of each prefix to its selected neighbours, (len(prefixes), n_train_sessions) CSR."""
        prefix = self.prefix_matrix(prefixes)
        sims = (prefix @ self.item_sessions).tocsr()  # nonzero exactly for sessions sharing an item
        sims.sort_indices()
        if self.similarity == "cosine":
            prefix_sizes = np.diff(prefix.indptr).astype(np.float64)
            row_of = np.repeat(np.arange(sims.shape[0]), np.diff(sims.indptr))
            sims.data /= np.sqrt(prefix_sizes[row_of] * self.session_sizes[sims.indices])
        kept_cols: list[np.ndarray] = []
        kept_sims: list[np.ndarray] = []
        for row in range(sims.shape[0]):
            cols = sims.indices[sims.indptr[row] : sims.indptr[row + 1]]
            values = sims.data[sims.indptr[row] : sims.indptr[row + 1]]
            if self.sample_size and len(cols) > self.sample_size:
                recent = np.argpartition(-self.recency[cols], self.sample_size - 1)[: self.sample_size]
                cols, values = cols[recent], values[recent]
            if len(cols) > self.k:
                # Top k by similarity; among equal similarities at the cut the more recent session wins.
                top = np.lexsort((self.recency[cols], values))[-self.k :]
                cols, values = cols[top], values[top]
            kept_cols.append(cols)
            kept_sims.append(values)
        indptr = np.concatenate([[0], np.cumsum([len(c) for c in kept_cols])]).astype(np.int64)
        indices = np.concatenate(kept_cols) if kept_cols else np.zeros(0, np.int64)
        data = np.concatenate(kept_sims) if kept_sims else np.zeros(0, np.float64)
        result = sp.csr_matrix((data, indices, indptr), shape=sims.shape)
        result.sort_indices()
        return result

    def score_prefixes(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-click scores of all items for each prefix, (len(prefixes), n_items) float64."""
        scores = (self.neighbours(prefixes) @ self.session_items).toarray()
        if self.item_factor is not None:
            scores *= self.item_factor
        return scores
