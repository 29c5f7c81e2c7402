"""The model-family interface: what one family's NumPy definition offers serving and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class SessionModel(Protocol):
    """A session is a state vector, stepped by one click at a time; the state scores every catalogue item.

    Serving and evaluation batch many sessions: row ``i`` of ``states`` belongs to the session that clicks
    ``items[i]``. Example, with any family (here GRU4REC):

    >>> from modelkit.gru4rec import GRU4RecNumpy, initial_weights
    >>> model = GRU4RecNumpy(initial_weights(n_items=5, layers=(4,), seed=0))
    >>> states = model.initial_state(2)  # two empty sessions
    >>> states = model.step(states, np.array([3, 1]))  # session 0 clicks item 3, session 1 item 1
    >>> model.scores(states).shape  # the next click of each, over all 5 items
    (2, 5)
    """

    family: str
    n_items: int
    state_size: int  # float32 values per session state
    window: int  # a state depends on the session's last ``window`` clicks only; 0: on all of them (recurrent)

    def initial_state(self, n_sessions: int) -> np.ndarray:
        """States of sessions with no click yet: (n_sessions, state_size) float32."""
        ...

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Apply one click per session: states (batch, state_size), items (batch,) -> new states, same shape."""
        ...

    def scores(self, states: np.ndarray) -> np.ndarray:
        """Score of every item as the next click: states (batch, state_size) -> (batch, n_items)."""
        ...


@dataclass(frozen=True)
class Family:
    """How to check and build one family's NumPy model from an artifact's weights and manifest fields."""

    name: str
    weight_shapes: Callable[[int, int, int, Mapping[str, Any]], dict[str, tuple[int, ...]]]
    """(n_items, hidden_size, n_layers, hyperparameters) -> the shape of every weight array; ValueError if the
    manifest fields contradict each other."""
    build: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], SessionModel]
    """(weights, hyperparameters) -> the serving/evaluation model."""
    index_weights: Callable[[Mapping[str, Any]], frozenset[str]] = lambda hyperparameters: frozenset()
    """hyperparameters -> the names of the weight arrays that hold indices (stored as int64, the rest float32)."""
