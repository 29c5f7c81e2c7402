"""GRU4REC in TensorFlow (training backend): shared item embedding, GRU hidden step, item scoring."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from modelkit.gru4rec import WEIGHT_BIAS, WEIGHT_EMBEDDING, layer_weight_names


def gru_step(
    x: tf.Tensor,  # (batch, n_in)
    h: tf.Tensor,  # (batch, hidden)
    w_ih: tf.Tensor,  # (n_in, 3 * hidden)
    w_hh: tf.Tensor,  # (hidden, 3 * hidden)
    b_ih: tf.Tensor,  # (3 * hidden,)
    b_hh: tf.Tensor,  # (3 * hidden,)
) -> tf.Tensor:  # (batch, hidden)
    """One GRU step (PyTorch GRUCell semantics, as in the official GRU4Rec); twin of modelkit.gru4rec.gru_step."""
    gx_r, gx_z, gx_n = tf.split(tf.matmul(x, w_ih) + b_ih, 3, axis=1)
    gh_r, gh_z, gh_n = tf.split(tf.matmul(h, w_hh) + b_hh, 3, axis=1)
    r = tf.sigmoid(gx_r + gh_r)
    z = tf.sigmoid(gx_z + gh_z)
    n = tf.tanh(gx_n + r * gh_n)
    return (1.0 - z) * n + z * h


def reset_hidden(hidden: tf.Tensor, starts: tf.Tensor) -> tf.Tensor:
    """Zero the state of slots whose session starts at this step: hidden (n_layers, batch, size), starts (batch,)."""
    return hidden * (1.0 - starts)[None, :, None]


class GRU4RecTF(tf.Module):
    """The trainable model; item rows (embedding, bias) are updated sparsely by the trainer."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__(name="gru4rec")
        self.item_embedding = tf.Variable(weights[WEIGHT_EMBEDDING], name=WEIGHT_EMBEDDING)
        self.item_bias = tf.Variable(weights[WEIGHT_BIAS], name=WEIGHT_BIAS)
        self.gru_layers: list[tuple[tf.Variable, ...]] = []
        layer = 0
        while layer_weight_names(layer)[0] in weights:
            names = layer_weight_names(layer)
            self.gru_layers.append(tuple(tf.Variable(weights[n], name=n) for n in names))
            layer += 1

    @property
    def dense_variables(self) -> list[tf.Variable]:
        return [v for layer in self.gru_layers for v in layer]

    def embed(self, items: tf.Tensor) -> tf.Tensor:  # (batch,) -> (batch, hidden)
        return tf.gather(self.item_embedding, items)

    def hidden_step(
        self, x: tf.Tensor, hidden: list[tf.Tensor], dropout_masks: list[tf.Tensor] | None = None
    ) -> list[tf.Tensor]:
        """New hidden state of every layer; ``dropout_masks`` (one per layer, training only) scale the output."""
        new_hidden = []
        for layer, weights in enumerate(self.gru_layers):
            x = gru_step(x, hidden[layer], *weights)
            if dropout_masks is not None:
                x = x * dropout_masks[layer]
            new_hidden.append(x)
        return new_hidden

    def score(self, output: tf.Tensor, candidates: tf.Tensor | None = None) -> tf.Tensor:
        """Scores (batch, n_candidates) of the candidate items, or of every item when candidates is None."""
        if candidates is None:
            return tf.matmul(output, self.item_embedding, transpose_b=True) + self.item_bias
        vectors = tf.gather(self.item_embedding, candidates)  # (n_candidates, hidden)
        return tf.matmul(output, vectors, transpose_b=True) + tf.gather(self.item_bias, candidates)

    # TrainableModel: a state row is the hidden vectors of all layers, concatenated (as in GRU4RecNumpy).
    def initial_state(self, n_sessions: int) -> tf.Tensor:  # (n_sessions, n_layers * hidden)
        return tf.zeros((n_sessions, sum(int(layer[1].shape[0]) for layer in self.gru_layers)))

    def step(self, states: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        hidden = tf.split(states, [int(layer[1].shape[0]) for layer in self.gru_layers], axis=1)
        return tf.concat(self.hidden_step(self.embed(items), hidden), axis=1)

    def scores(self, states: tf.Tensor) -> tf.Tensor:  # (batch, n_layers * hidden) -> (batch, n_items)
        return self.score(states[:, -int(self.item_embedding.shape[1]) :])

    def weights(self) -> dict[str, np.ndarray]:
        result = {WEIGHT_EMBEDDING: self.item_embedding.numpy(), WEIGHT_BIAS: self.item_bias.numpy()}
        for layer, variables in enumerate(self.gru_layers):
            for name, variable in zip(layer_weight_names(layer), variables, strict=True):
                result[name] = variable.numpy()
        return result
