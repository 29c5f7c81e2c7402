"""SASRec in TensorFlow (training backend): causal self-attention over a window of a session's last items."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from modelkit.sasrec import (
    LAYER_NORM_EPS,
    MASKED,
    WEIGHT_FINAL_NORM,
    WEIGHT_ITEMS,
    WEIGHT_POSITIONS,
    block_weight_names,
)


def layer_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:  # (..., hidden) -> same
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) / tf.sqrt(variance + LAYER_NORM_EPS) * gamma + beta


def dropout(x: tf.Tensor, rate: float, rng: tf.random.Generator | None) -> tf.Tensor:
    """Inverted dropout drawn from ``rng``; the identity without a generator (inference) or at rate 0."""
    if rng is None or rate == 0.0:
        return x
    keep = tf.cast(rng.uniform(tf.shape(x)) >= rate, x.dtype)
    return x * keep / (1.0 - rate)


class SASRecTF(tf.Module):
    """The trainable twin of ``modelkit.sasrec.SASRecNumpy``: same weights, same blocks, same state layout.

    ``encode`` is the training forward: the output at every position of a batch of windows, with dropout
    (after the input embedding, on the attention weights, inside the feed-forward) when given a generator.
    """

    def __init__(self, weights: dict[str, np.ndarray], n_heads: int, dropout_rate: float = 0.0) -> None:
        super().__init__(name="sasrec")
        self.item_embedding = tf.Variable(weights[WEIGHT_ITEMS], name=WEIGHT_ITEMS)  # (n_items, hidden)
        self.position_embedding = tf.Variable(weights[WEIGHT_POSITIONS], name=WEIGHT_POSITIONS)  # (max_len, hidden)
        self.final_norm = tuple(tf.Variable(weights[name], name=name) for name in WEIGHT_FINAL_NORM)
        self.blocks: list[dict[str, tf.Variable]] = []
        while block_weight_names(len(self.blocks))["w_q"] in weights:
            names = block_weight_names(len(self.blocks))
            self.blocks.append({role: tf.Variable(weights[name], name=name) for role, name in names.items()})
        self.n_items, self.hidden_size = (int(n) for n in self.item_embedding.shape)
        self.max_len = int(self.position_embedding.shape[0])
        if n_heads < 1 or self.hidden_size % n_heads:
            raise ValueError(f"n_heads {n_heads} must divide the hidden size {self.hidden_size}")
        self.n_heads = n_heads
        self.dropout_rate = dropout_rate

    def named_variables(self) -> dict[str, tf.Variable]:
        """Every weight under its artifact name (modelkit.sasrec), in a fixed order."""
        named = {WEIGHT_ITEMS: self.item_embedding, WEIGHT_POSITIONS: self.position_embedding}
        named.update(zip(WEIGHT_FINAL_NORM, self.final_norm, strict=True))
        for number, block in enumerate(self.blocks):
            names = block_weight_names(number)
            named.update({names[role]: variable for role, variable in block.items()})
        return named

    def encode(self, windows: tf.Tensor, rng: tf.random.Generator | None = None) -> tf.Tensor:
        """Output at every position: windows (batch, width) of item index + 1, 0 = empty, newest last,
        width <= max_len -> (batch, width, hidden). ``rng`` switches dropout on (training).

        A window narrower than max_len stands for its left-padded full window: empty slots are masked, so
        trimming leading empty columns changes nothing but the cost.
        """
        width = tf.shape(windows)[1]
        present = windows > 0  # (batch, width)
        mask = tf.cast(present, tf.float32)[:, :, None]  # (batch, width, 1)
        items = tf.gather(self.item_embedding, tf.maximum(windows - 1, 0))  # (batch, width, hidden)
        x = items * np.float32(np.sqrt(self.hidden_size)) + self.position_embedding[self.max_len - width :]
        x = dropout(x, self.dropout_rate, rng) * mask
        later = tf.range(width)[None, :] > tf.range(width)[:, None]  # (width, width): key after query
        causal = tf.where(later, MASKED, 0.0)  # (width, width)
        empty_keys = tf.where(present, 0.0, MASKED)[:, None, None, :]  # (batch, 1, 1, width)
        for block in self.blocks:
            x = self._block(block, x, causal + empty_keys, rng) * mask
        return layer_norm(x, *self.final_norm)

    def _block(
        self, w: dict[str, tf.Variable], x: tf.Tensor, logit_mask: tf.Tensor, rng: tf.random.Generator | None
    ) -> tf.Tensor:  # x (batch, width, hidden), logit_mask (batch, 1, width, width) -> (batch, width, hidden)
        batch, width = tf.shape(x)[0], tf.shape(x)[1]
        heads, size = self.n_heads, self.hidden_size // self.n_heads

        def split_heads(t: tf.Tensor) -> tf.Tensor:  # (batch, width, hidden) -> (batch, heads, width, size)
            return tf.transpose(tf.reshape(t, [batch, width, heads, size]), [0, 2, 1, 3])

        normed = layer_norm(x, w["attn_norm_gamma"], w["attn_norm_beta"])
        q = split_heads(tf.matmul(normed, w["w_q"]) + w["b_q"])
        k = split_heads(tf.matmul(x, w["w_k"]) + w["b_k"])
        v = split_heads(tf.matmul(x, w["w_v"]) + w["b_v"])
        logits = tf.matmul(q, k, transpose_b=True) * np.float32(1.0 / np.sqrt(size))  # (batch, heads, width, width)
        attention = dropout(tf.nn.softmax(logits + logit_mask, axis=-1), self.dropout_rate, rng)
        merged = tf.reshape(tf.transpose(tf.matmul(attention, v), [0, 2, 1, 3]), [batch, width, self.hidden_size])
        x = normed + tf.matmul(merged, w["w_o"]) + w["b_o"]
        x = layer_norm(x, w["ffn_norm_gamma"], w["ffn_norm_beta"])
        inner = dropout(tf.nn.relu(tf.matmul(x, w["ffn_w1"]) + w["ffn_b1"]), self.dropout_rate, rng)
        return x + dropout(tf.matmul(inner, w["ffn_w2"]) + w["ffn_b2"], self.dropout_rate, rng)

    def score(self, outputs: tf.Tensor) -> tf.Tensor:  # (n, hidden) -> (n, n_items); no bias
        return tf.matmul(outputs, self.item_embedding, transpose_b=True)

    # TrainableModel: a state row is the window of the last max_len item indices + 1 (as in SASRecNumpy).
    def initial_state(self, n_sessions: int) -> tf.Tensor:  # (n_sessions, max_len)
        return tf.zeros((n_sessions, self.max_len), tf.float32)

    def step(self, states: tf.Tensor, items: tf.Tensor) -> tf.Tensor:  # (batch, max_len), (batch,) -> same
        newest = tf.cast(items, tf.float32)[:, None] + 1.0
        return tf.concat([states[:, 1:], newest], axis=1)

    def scores(self, states: tf.Tensor) -> tf.Tensor:  # (batch, max_len) -> (batch, n_items)
        return self.score(self.encode(tf.cast(states, tf.int64))[:, -1])

    def weights(self) -> dict[str, np.ndarray]:
        return {name: variable.numpy() for name, variable in self.named_variables().items()}
