"""Training V-SKNN: index the training sessions (items, recency, idf) for the served kNN model."""

from __future__ import annotations

import time

import numpy as np

from modelkit.vsknn import SessionIndex
from offline.session_arrays import SessionArrays
from offline.training_report import TrainingReport
from offline.vsknn_params import VSKNNParams
from schemas.manifest import HyperValue


def session_index(data: SessionArrays, n_items: int, idf: bool) -> SessionIndex:
    """The V-SKNN index of every session of ``data`` (items must be known: no UNKNOWN_ITEM)."""
    if data.n_events and data.item_idx.min() < 0:
        raise ValueError("V-SKNN sessions contain unknown items; filter them first")
    return SessionIndex.build(data.event_sessions, data.item_idx.astype(np.int64), data.timestamps, data.n_sessions,
                              n_items, idf)


class VSKNNTrainer:
    """A ``Trainer`` whose weights are the session index (``modelkit.vsknn.SessionIndex.arrays``)."""

    family = "vsknn"

    def __init__(self, params: VSKNNParams, item_counts: np.ndarray) -> None:  # (n_items,) training clicks per item
        self.params = params
        self.n_items = len(item_counts)
        self.index: SessionIndex | None = None

    def fit(self, data: SessionArrays, progress: bool = True) -> TrainingReport:
        """Index every session of ``data`` (items must be known: no UNKNOWN_ITEM)."""
        started = time.perf_counter()
        self.index = session_index(data, self.n_items, self.params.idf)
        return TrainingReport(seconds=time.perf_counter() - started, events=data.n_events)

    def weights(self) -> dict[str, np.ndarray]:
        if self.index is None:
            raise RuntimeError("fit() first")
        return self.index.arrays()

    def hyperparameters(self) -> dict[str, HyperValue]:
        """The manifest's hyperparameters: the params plus the index sizes the artifact check needs."""
        if self.index is None:
            raise RuntimeError("fit() first")
        return {**self.params.flat(), "n_sessions": int(self.index.session_items.shape[0]),
                "n_links": int(self.index.session_items.nnz)}
