"""V-SKNN session kNN in NumPy/SciPy (serving and evaluation): the training sessions' index is the artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from modelkit.family import Family
from modelkit.windows import append_clicks, empty_windows

WEIGHTINGS = ("div", "linear", "same")
SIMILARITIES = ("dot", "cosine")
# Artifact arrays: the training sessions' items as CSR rows, each session's recency rank, each item's idf factor.
WEIGHT_INDPTR = "session_item_indptr"  # (n_sessions + 1,) int
WEIGHT_INDICES = "session_item_indices"  # (n_links,) int: item indices, sorted within a session
WEIGHT_RECENCY = "session_recency"  # (n_sessions,) int: 0 = the session whose last click is oldest
WEIGHT_ITEM_FACTOR = "item_factor"  # (n_items,) float: 1 + idf, or 1 without idf
INDEX_WEIGHTS = frozenset({WEIGHT_INDPTR, WEIGHT_INDICES, WEIGHT_RECENCY})


def position_weights(distance: np.ndarray, weighting: str) -> np.ndarray:
    """Weight of a prefix item ``distance`` clicks before the last one (0 = last click)."""
    distance = np.asarray(distance, dtype=np.float64)
    if weighting == "div":
        return 1.0 / (distance + 1.0)
    if weighting == "linear":
        return np.maximum(1.0 - 0.1 * distance, 0.1)
    if weighting == "same":
        return np.ones_like(distance)
    raise ValueError(f"unknown V-SKNN weighting {weighting!r}; expected one of {WEIGHTINGS}")


@dataclass(frozen=True)
class SessionIndex:
    """The training sessions as V-SKNN sees them: which items each holds, how recent it is, item idf factors."""

    session_items: sp.csr_matrix  # (n_sessions, n_items) binary, sorted indices
    recency: np.ndarray  # (n_sessions,) int64 rank: larger = more recent last click (ties: later session)
    item_factor: np.ndarray  # (n_items,) float64: 1 + log(n_sessions / sessions with the item), or ones

    @classmethod
    def build(cls, event_sessions: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_sessions: int,
              n_items: int, idf: bool) -> SessionIndex:
        """From every training event's session index, item index and time (n_events,) each."""
        session_items = sp.csr_matrix((np.ones(len(items)), (event_sessions, items)), shape=(n_sessions, n_items))
        session_items.sum_duplicates()
        session_items.data[:] = 1.0
        last_time = np.full(n_sessions, -np.inf)
        np.maximum.at(last_time, event_sessions, timestamps)
        recency = np.empty(n_sessions, dtype=np.int64)
        recency[np.lexsort((np.arange(n_sessions), last_time))] = np.arange(n_sessions)
        item_factor = np.ones(n_items)
        if idf:
            item_df = np.bincount(session_items.indices, minlength=n_items).astype(np.float64)
            item_factor += np.where(item_df > 0, np.log(max(n_sessions, 1) / np.maximum(item_df, 1.0)), 0.0)
        return cls(session_items, recency, item_factor)

    def arrays(self) -> dict[str, np.ndarray]:
        """The artifact's weight arrays."""
        return {WEIGHT_INDPTR: self.session_items.indptr.astype(np.int64),
                WEIGHT_INDICES: self.session_items.indices.astype(np.int64),
                WEIGHT_RECENCY: self.recency, WEIGHT_ITEM_FACTOR: self.item_factor}

    @classmethod
    def from_arrays(cls, weights: Mapping[str, np.ndarray]) -> SessionIndex:
        """From the artifact's arrays; ValueError when they do not form an index."""
        indptr, indices = np.asarray(weights[WEIGHT_INDPTR]), np.asarray(weights[WEIGHT_INDICES])
        item_factor = np.asarray(weights[WEIGHT_ITEM_FACTOR], dtype=np.float64)
        recency = np.asarray(weights[WEIGHT_RECENCY], dtype=np.int64)
        if (len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any()
                or (len(indices) and indices.max() >= len(item_factor))
                or not np.array_equal(np.sort(recency), np.arange(len(indptr) - 1))):
            raise ValueError("the vsknn index arrays are inconsistent (row pointers, item indices or recency ranks)")
        session_items = sp.csr_matrix((np.ones(len(indices)), indices, indptr),
                                      shape=(len(indptr) - 1, len(item_factor)))
        return cls(session_items, recency, item_factor)


class VSKNNNumpy:
    """Vector-multiplication session kNN, V-SKNN (Ludewig & Jannach 2018), as a ``SessionModel``.

    The prefix is a vector over items whose weights decay with distance from the last click (an item clicked
    more than once keeps its largest weight). Candidate neighbours are the training sessions that share an item
    with the prefix, cut to the ``sample_size`` most recent by last click (0 = no cut). Similarity is the dot
    product of the prefix vector with the neighbour's binary item vector (``cosine`` divides by
    sqrt(|prefix items| * |neighbour items|)). The top ``k`` neighbours by similarity (equal similarities at the
    cut: the more recent session first) vote for their items with their similarity, times the item's factor.

    A session's state is its last ``max_len`` item indices plus one, oldest first, 0 for an empty slot (as
    SASRec's): the prefix, for sessions of up to ``max_len`` clicks.
    """

    family = "vsknn"

    def __init__(self, index: SessionIndex, k: int, sample_size: int, weighting: str, similarity: str,
                 max_len: int) -> None:
        if k < 1 or sample_size < 0 or max_len < 1:
            raise ValueError("V-SKNN needs k >= 1, sample_size >= 0 (0: every candidate) and max_len >= 1")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; expected one of {SIMILARITIES}")
        position_weights(np.zeros(1), weighting)  # validates the name
        self.k, self.sample_size, self.weighting, self.similarity = k, sample_size, weighting, similarity
        self.n_items = index.session_items.shape[1]
        self.max_len = self.state_size = self.window = max_len
        # Sessions renumbered by recency (oldest first), so a candidate's column is its recency rank: a prefix's
        # most recent candidates are the last of its row, found without sorting.
        self.session_of_rank = np.argsort(index.recency)  # (n_sessions,) session number at each recency rank
        self.recent_items = index.session_items[self.session_of_rank].tocsr()  # (n_sessions, n_items) by rank
        self.item_sessions = self.recent_items.T.tocsr()  # (n_items, n_sessions): item -> sessions, by rank
        self.session_sizes = np.diff(self.recent_items.indptr).astype(np.float64)  # distinct items, by rank
        self.item_factor = index.item_factor  # (n_items,); the index itself is not kept: its rows are reordered above

    def initial_state(self, n_sessions: int) -> np.ndarray:  # (n_sessions, max_len)
        return empty_windows(n_sessions, self.max_len)

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Append clicks ``items`` (batch,) to the windows ``states`` (batch, max_len), dropping the oldest."""
        return append_clicks(states, items)

    def scores(self, states: np.ndarray) -> np.ndarray:  # (batch, max_len) -> (batch, n_items) float64
        windows = states.astype(np.int64)
        row_of, column = np.nonzero(windows)  # the newest click sits in the last column
        prefix = self._weighted(row_of, windows[row_of, column] - 1, self.max_len - 1 - column, len(windows))
        return self._score(prefix)

    def prefix_matrix(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Position-weighted prefix vectors, (len(prefixes), n_items) CSR."""
        lengths = np.fromiter((len(p) for p in prefixes), dtype=np.int64, count=len(prefixes))
        total = int(lengths.sum())
        items = np.concatenate([np.asarray(p, np.int64) for p in prefixes]) if total else np.zeros(0, np.int64)
        row_of = np.repeat(np.arange(len(prefixes), dtype=np.int64), lengths)
        distance = np.cumsum(lengths)[row_of] - 1 - np.arange(total)
        return self._weighted(row_of, items, distance, len(prefixes))

    def _weighted(self, row_of: np.ndarray, items: np.ndarray, distance: np.ndarray, n_rows: int) -> sp.csr_matrix:
        """Prefix vectors from every click's row, item and distance from its row's last click, (n_rows, n_items)."""
        # Weights never grow with distance, so a repeated item keeps its most recent (smallest) distance.
        order = np.lexsort((distance, items, row_of))
        first = np.ones(len(order), dtype=bool)
        first[1:] = (row_of[order][1:] != row_of[order][:-1]) | (items[order][1:] != items[order][:-1])
        keep = order[first]
        weights = position_weights(distance[keep], self.weighting)
        return sp.csr_matrix((weights, (row_of[keep], items[keep])), shape=(n_rows, self.n_items), dtype=np.float64)

    def neighbours(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Similarity of each prefix to its selected neighbours, (len(prefixes), n_sessions) CSR by session number."""
        by_rank = self._neighbours(self.prefix_matrix(prefixes))
        result = sp.csr_matrix((by_rank.data, self.session_of_rank[by_rank.indices], by_rank.indptr),
                               shape=by_rank.shape)
        result.sort_indices()
        return result

    def _neighbours(self, prefix: sp.csr_matrix) -> sp.csr_matrix:
        """The selected neighbours' similarities, (n_prefixes, n_sessions) CSR with sessions by recency rank."""
        sims = (prefix @ self.item_sessions).tocsr()  # nonzero exactly for sessions sharing an item
        sims.sort_indices()  # within a row: oldest candidate first
        row_of = np.repeat(np.arange(sims.shape[0]), np.diff(sims.indptr))  # (nnz,) each candidate's prefix
        if self.similarity == "cosine":
            prefix_sizes = np.diff(prefix.indptr).astype(np.float64)
            sims.data /= np.sqrt(prefix_sizes[row_of] * self.session_sizes[sims.indices])
        newest_first = np.arange(sims.nnz)[::-1]  # rows in reverse too: the sort below groups them again
        if self.sample_size:  # each prefix's sample_size most recent candidates: the last of its row
            newest_first = newest_first[(sims.indptr[row_of + 1] - 1 - np.arange(sims.nnz))[::-1] < self.sample_size]
        # Then the top k by similarity; among equal similarities the more recent session (stable sort) wins.
        order = newest_first[np.lexsort((-sims.data[newest_first], row_of[newest_first]))]
        top = order[_ranks_within(row_of[order], sims.shape[0]) < self.k]
        result = sp.csr_matrix((sims.data[top], (row_of[top], sims.indices[top])), shape=sims.shape)
        result.sort_indices()
        return result

    def score_prefixes(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-click scores of all items for each prefix, (len(prefixes), n_items) float64 (0: no vote)."""
        return self._score(self.prefix_matrix(prefixes))

    def _score(self, prefix: sp.csr_matrix) -> np.ndarray:  # (n_prefixes, n_items) CSR -> dense scores
        scores = (self._neighbours(prefix) @ self.recent_items).toarray()
        scores *= self.item_factor
        return scores


def _ranks_within(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """0-based position of every entry among the entries of its row, for entries grouped by row in order."""
    starts = np.searchsorted(rows, np.arange(n_rows))  # (n_rows,) first entry of each row
    return np.arange(len(rows)) - starts[rows]


def _settings(hyperparameters: Mapping[str, Any]) -> tuple[int, int, str, str, int, int, int]:
    """(k, sample_size, weighting, similarity, max_len, n_sessions, n_links); ValueError when one is malformed."""
    values: dict[str, int] = {}
    for name in ("k", "sample_size", "max_len", "n_sessions", "n_links"):
        value = hyperparameters.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"vsknn needs a non-negative integer hyperparameter {name}")
        values[name] = value
    weighting, similarity = hyperparameters.get("weighting"), hyperparameters.get("similarity")
    if weighting not in WEIGHTINGS or similarity not in SIMILARITIES:
        raise ValueError(f"vsknn needs weighting in {WEIGHTINGS} and similarity in {SIMILARITIES}")
    return (values["k"], values["sample_size"], str(weighting), str(similarity), values["max_len"],
            values["n_sessions"], values["n_links"])


def weight_shapes(n_items: int, hidden_size: int, n_layers: int, hyperparameters: Mapping[str, Any]
                  ) -> dict[str, tuple[int, ...]]:
    """Shapes of the index arrays; the manifest's hidden_size is the window (max_len), n_layers 1."""
    *_, max_len, n_sessions, n_links = _settings(hyperparameters)
    if hidden_size != max_len or n_layers != 1:
        raise ValueError("a vsknn manifest's hidden_size must be its max_len and n_layers 1")
    return {WEIGHT_INDPTR: (n_sessions + 1,), WEIGHT_INDICES: (n_links,), WEIGHT_RECENCY: (n_sessions,),
            WEIGHT_ITEM_FACTOR: (n_items,)}


def _build(weights: Mapping[str, np.ndarray], hyperparameters: Mapping[str, Any]) -> VSKNNNumpy:
    k, sample_size, weighting, similarity, max_len, _, _ = _settings(hyperparameters)
    return VSKNNNumpy(SessionIndex.from_arrays(weights), k, sample_size, weighting, similarity, max_len)


FAMILY = Family("vsknn", weight_shapes, _build, index_weights=lambda hyperparameters: INDEX_WEIGHTS)
