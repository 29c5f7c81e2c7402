"""The training side of the model-family interface: a family's TensorFlow definition and its trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from offline.session_arrays import SessionArrays
from offline.training_report import TrainingReport
from schemas.manifest import HyperValue

if TYPE_CHECKING:
    import tensorflow as tf


class TrainableModel(Protocol):
    """A family's TensorFlow definition, with the same state layout and results as its NumPy twin
    (``modelkit.family.SessionModel``): the parity test holds the two together."""

    def initial_state(self, n_sessions: int) -> tf.Tensor:
        """(n_sessions, state_size) float32."""
        ...

    def step(self, states: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """(batch, state_size), (batch,) -> (batch, state_size)."""
        ...

    def scores(self, states: tf.Tensor) -> tf.Tensor:
        """(batch, state_size) -> (batch, n_items)."""
        ...

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as the artifact stores them (the NumPy twin is built from these)."""
        ...


class Trainer(Protocol):
    """Trains one family's model on sessions; ``weights()`` is what goes into the artifact."""

    family: str

    def fit(self, data: SessionArrays, progress: bool = True) -> TrainingReport: ...

    def weights(self) -> dict[str, np.ndarray]: ...

    def hyperparameters(self) -> dict[str, HyperValue]:
        """What the manifest records of this run (its family's loader reads what it needs from them)."""
        ...
