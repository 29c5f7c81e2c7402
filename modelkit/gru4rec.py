"""GRU4REC forward pass in NumPy (serving and evaluation backend): embed, GRU hidden step, score all items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelkit.family import Family

WEIGHT_EMBEDDING = "item_embedding"  # (n_items, hidden) shared input embedding and output item vectors
WEIGHT_BIAS = "item_bias"  # (n_items,)


def layer_weight_names(layer: int) -> tuple[str, str, str, str]:
    """Names of one GRU layer's weights: w_ih (n_in, 3h), w_hh (h, 3h), b_ih (3h,), b_hh (3h,); gates r, z, n."""
    return (f"gru{layer}_w_ih", f"gru{layer}_w_hh", f"gru{layer}_b_ih", f"gru{layer}_b_hh")


def _uniform_init(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    sigma = np.sqrt(6.0 / (rows + cols))
    return (rng.random((rows, cols), dtype=np.float32) * 2 * sigma - sigma).astype(np.float32)


def initial_weights(n_items: int, layers: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Initial weights as in the official implementation: uniform +-sqrt(6/(fan_in+fan_out)) per gate block."""
    rng = np.random.default_rng(seed)
    hidden = layers[-1]
    weights = {
        WEIGHT_EMBEDDING: _uniform_init(rng, n_items, hidden),  # constrained: input size = last layer size
        WEIGHT_BIAS: np.zeros(n_items, np.float32),
    }
    n_in = hidden
    for layer, size in enumerate(layers):
        w_ih, w_hh, b_ih, b_hh = layer_weight_names(layer)
        weights[w_ih] = np.hstack([_uniform_init(rng, n_in, size) for _ in range(3)])
        weights[w_hh] = np.hstack([_uniform_init(rng, size, size) for _ in range(3)])
        weights[b_ih] = np.zeros(3 * size, np.float32)
        weights[b_hh] = np.zeros(3 * size, np.float32)
        n_in = size
    return weights


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


def gru_step(
    x: np.ndarray,  # (batch, n_in)
    h: np.ndarray,  # (batch, hidden)
    w_ih: np.ndarray,  # (n_in, 3 * hidden)
    w_hh: np.ndarray,  # (hidden, 3 * hidden)
    b_ih: np.ndarray,  # (3 * hidden,)
    b_hh: np.ndarray,  # (3 * hidden,)
) -> np.ndarray:  # (batch, hidden)
    """One GRU step (PyTorch GRUCell semantics, as in the official GRU4Rec): reset gate applied after w_hh."""
    size = h.shape[1]
    gx = x @ w_ih + b_ih  # (batch, 3 * hidden)
    gh = h @ w_hh + b_hh  # (batch, 3 * hidden)
    r = _sigmoid(gx[:, :size] + gh[:, :size])
    z = _sigmoid(gx[:, size : 2 * size] + gh[:, size : 2 * size])
    n = np.tanh(gx[:, 2 * size :] + r * gh[:, 2 * size :])
    return (1.0 - z) * n + z * h


class GRU4RecNumpy:
    """Inference-only GRU4REC over plain arrays (a ``SessionModel``): the state is every layer's hidden vector."""

    family = "gru4rec"
    window = 0  # the hidden state carries the whole session

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.embedding = np.ascontiguousarray(weights[WEIGHT_EMBEDDING], dtype=np.float32)
        self.bias = np.ascontiguousarray(weights[WEIGHT_BIAS], dtype=np.float32)
        self.layers: list[tuple[np.ndarray, ...]] = []
        layer = 0
        while layer_weight_names(layer)[0] in weights:
            self.layers.append(
                tuple(np.asarray(weights[n], dtype=np.float32) for n in layer_weight_names(layer))
            )
            layer += 1
        self.n_items, self.hidden_size = self.embedding.shape
        self.state_size = self.n_layers * self.hidden_size

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def embed(self, items: np.ndarray) -> np.ndarray:  # (batch,) -> (batch, hidden)
        return self.embedding[items]

    def hidden_step(self, x: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """Advance every layer by one click; hidden (n_layers, batch, hidden) -> new hidden, same shape."""
        new_hidden = np.empty_like(hidden)
        for layer, weights in enumerate(self.layers):
            x = gru_step(x, hidden[layer], *weights)
            new_hidden[layer] = x
        return new_hidden

    def score(self, output: np.ndarray) -> np.ndarray:  # (batch, hidden) -> (batch, n_items)
        scores = output @ self.embedding.T
        scores += self.bias
        return scores

    # SessionModel: a state row is the hidden vectors of layers 0..n_layers-1, concatenated.
    def initial_state(self, n_sessions: int) -> np.ndarray:  # (n_sessions, n_layers * hidden)
        return np.zeros((n_sessions, self.state_size), np.float32)

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Apply clicks ``items`` (batch,) to ``states`` (batch, n_layers * hidden)."""
        if self.n_layers == 1:
            return self.hidden_step(self.embed(items), states[None])[0]
        hidden = states.reshape(len(states), self.n_layers, self.hidden_size).transpose(1, 0, 2)
        new_hidden = self.hidden_step(self.embed(items), hidden)  # (n_layers, batch, hidden)
        return new_hidden.transpose(1, 0, 2).reshape(len(states), self.state_size)

    def scores(self, states: np.ndarray) -> np.ndarray:  # (batch, n_layers * hidden) -> (batch, n_items)
        return self.score(states[:, self.state_size - self.hidden_size :])


def weight_shapes(n_items: int, hidden_size: int, n_layers: int, hyperparameters: Mapping[str, Any]
                  ) -> dict[str, tuple[int, ...]]:
    """Shape of every weight array (shared embedding: input size = last layer size); the manifest's
    ``layers`` hyperparameter, when given, must agree with n_layers and hidden_size."""
    layers = hyperparameters.get("layers", [hidden_size] * n_layers)
    if not isinstance(layers, list) or len(layers) != n_layers or layers[-1] != hidden_size:
        raise ValueError("layers do not match n_layers/hidden_size")
    shapes: dict[str, tuple[int, ...]] = {WEIGHT_EMBEDDING: (n_items, hidden_size), WEIGHT_BIAS: (n_items,)}
    n_in = hidden_size
    for layer, size in enumerate(layers):
        w_ih, w_hh, b_ih, b_hh = layer_weight_names(layer)
        shapes.update({w_ih: (n_in, 3 * size), w_hh: (size, 3 * size), b_ih: (3 * size,), b_hh: (3 * size,)})
        n_in = size
    return shapes


FAMILY = Family("gru4rec", weight_shapes, lambda weights, hyperparameters: GRU4RecNumpy(weights))
