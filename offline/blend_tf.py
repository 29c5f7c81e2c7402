"""A blend in TensorFlow: member states side by side, the members' softmax probabilities averaged (the NumPy twin
is ``modelkit.blend``; members are trained one by one, each by its own trainer)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from modelkit.blend import prefixed
from offline.trainable import TrainableModel


class BlendTF:
    """``TrainableModel`` over member TensorFlow models of one catalogue, with positive shares (normalised)."""

    def __init__(self, members: Sequence[TrainableModel], shares: Sequence[float]) -> None:
        self.members = list(members)
        self.shares = [share / sum(shares) for share in shares]
        self.sizes = [int(member.initial_state(1).shape[1]) for member in self.members]  # state columns per member

    def initial_state(self, n_sessions: int) -> tf.Tensor:  # (n_sessions, state_size)
        return tf.concat([member.initial_state(n_sessions) for member in self.members], axis=1)

    def step(self, states: tf.Tensor, items: tf.Tensor) -> tf.Tensor:  # (batch, state_size), (batch,) -> same
        parts = tf.split(states, self.sizes, axis=1)
        return tf.concat([member.step(part, items) for member, part in zip(self.members, parts, strict=True)], axis=1)

    def scores(self, states: tf.Tensor) -> tf.Tensor:  # (batch, state_size) -> (batch, n_items) probabilities
        parts = tf.split(states, self.sizes, axis=1)
        return tf.add_n([share * tf.nn.softmax(member.scores(part))
                         for member, share, part in zip(self.members, self.shares, parts, strict=True)])

    def weights(self) -> dict[str, np.ndarray]:
        return {name: value for number, member in enumerate(self.members)
                for name, value in prefixed(member.weights(), number).items()}
