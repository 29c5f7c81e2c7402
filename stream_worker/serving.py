"""The model as the worker serves it: any family's NumPy model, item lookup by id or hash, batched top-k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelkit.artifact import ModelArtifact
from stream_worker.session_state import item_hash, item_hash32


@dataclass(frozen=True)
class TopK:
    """Top-k items of many sessions, best first."""

    items: np.ndarray  # (batch, k) item indices
    scores: np.ndarray  # (batch, k) float32


def top_k(scores: np.ndarray, k: int) -> TopK:
    """Best ``k`` columns of each row, sorted by score (descending; equal scores by item index)."""
    n_items = scores.shape[1]
    k = min(k, n_items)
    if k < n_items:
        part = np.argpartition(scores, n_items - k, axis=1)[:, n_items - k :]  # (batch, k), unordered
    else:
        part = np.broadcast_to(np.arange(k), (scores.shape[0], k))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1)
    return TopK(items, np.take_along_axis(part_scores, order, axis=1))


class ServingModel:
    """One loaded model version, immutable once built; swapped as a whole on a model update."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.version = artifact.version
        self.family = artifact.manifest.model_family
        self.artifact_path = artifact.path
        self.network = artifact.model()
        self.window = self.network.window  # clicks a state depends on (0: all); the ring keeps at least these
        self.item_ids = artifact.item_index.ids  # (n_items,) object
        self._index_of_id = {item_id: i for i, item_id in enumerate(self.item_ids.tolist())}
        self._index_of_hash = {item_hash(item_id): i for item_id, i in self._index_of_id.items()}
        self.item_hash32 = np.array([item_hash32(i) for i in self.item_ids.tolist()], dtype=np.uint32)  # (n_items,)
        self._hash32_order = np.argsort(self.item_hash32, kind="stable")  # (n_items,) item indices by hash32
        self._hash32_sorted = self.item_hash32[self._hash32_order]  # (n_items,)
        self._popularity = np.asarray(artifact.popularity, dtype=np.float32)[None, :]  # (1, n_items)
        self._popular: dict[int, TopK] = {}

    def popular(self, k: int) -> TopK:
        """The k most clicked training items: the fallback for a session with no known item."""
        if k not in self._popular:
            self._popular[k] = top_k(self._popularity, k)
        return self._popular[k]

    def index_of(self, item_id: str) -> int:
        """Item index, or -1 for an item the model does not know."""
        return self._index_of_id.get(item_id, -1)

    def indices_of_hash32(self, hashes: np.ndarray) -> list[np.ndarray]:
        """Item indices whose ``item_hash32`` is each of ``hashes`` (k,): usually one; none for an item this model
        does not know; several where two item ids share a 32-bit hash (ascending: the sort by hash is stable)."""
        wanted = np.asarray(hashes, dtype=np.uint32)
        first = np.searchsorted(self._hash32_sorted, wanted, side="left")
        stop = np.searchsorted(self._hash32_sorted, wanted, side="right")
        return [self._hash32_order[a:b] for a, b in zip(first.tolist(), stop.tolist(), strict=True)]

    def initial_state(self) -> np.ndarray:  # (state_size,)
        return self.network.initial_state(1)[0]

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Apply one click per session: states (batch, state_size), items (batch,) -> new states."""
        return self.network.step(states, items)

    def recommend(self, states: np.ndarray, k: int, rows_per_chunk: int = 64) -> TopK:
        """Top-k next items for session states (batch, state_size); scored in chunks that stay in cache."""
        chunks = [top_k(self.network.scores(states[first : first + rows_per_chunk]), k)
                  for first in range(0, len(states), rows_per_chunk)]
        if len(chunks) == 1:
            return chunks[0]
        return TopK(np.concatenate([c.items for c in chunks]), np.concatenate([c.scores for c in chunks]))

    def recompute(self, ring: Sequence[int]) -> tuple[np.ndarray, int]:
        """State (state_size,) from a ring of item hashes, and how many of them are known."""
        state = self.network.initial_state(1)  # (1, state_size)
        known = 0
        for hashed in ring:
            index = self._index_of_hash.get(hashed)
            if index is not None:
                state = self.step(state, np.array([index]))
                known += 1
        return state[0], known
