"""SASRec forward pass in NumPy (serving and evaluation backend): causal self-attention over a session's last items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelkit.family import Family
from modelkit.windows import append_clicks, empty_windows

WEIGHT_ITEMS = "item_embedding"  # (n_items, hidden) input embedding, shared with the output item vectors
WEIGHT_POSITIONS = "position_embedding"  # (max_len, hidden) learned; the newest click sits at max_len - 1
WEIGHT_FINAL_NORM = ("final_norm_gamma", "final_norm_beta")  # (hidden,) each
LAYER_NORM_EPS = 1e-8
MASKED = -1e9  # attention logit of a key a query may not see (later, or padding)
LENGTH_GROUPS = (4, 16)  # encode scores windows of <= 4, <= 16 and more clicks as separate groups (see encode)


MATRIX_ROLES = ("w_q", "w_k", "w_v", "w_o", "ffn_w1", "ffn_w2")  # (hidden, hidden); every other role is (hidden,)
BLOCK_ROLES = ("attn_norm_gamma", "attn_norm_beta", "w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o",
               "ffn_norm_gamma", "ffn_norm_beta", "ffn_w1", "ffn_b1", "ffn_w2", "ffn_b2")


def block_weight_names(block: int) -> dict[str, str]:
    """Names of one block's weights by role: layer norms, attention and feed-forward projections, biases."""
    return {role: f"block{block}_{role}" for role in BLOCK_ROLES}


def weight_shapes(n_items: int, hidden_size: int, n_layers: int, hyperparameters: Mapping[str, Any]
                  ) -> dict[str, tuple[int, ...]]:
    """Shape of every weight array of ``n_layers`` blocks; ``max_len`` and ``n_heads`` come from the manifest's
    hyperparameters (ValueError when missing or when the heads do not divide the hidden size)."""
    max_len, n_heads = hyperparameters.get("max_len"), hyperparameters.get("n_heads")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError("sasrec needs a positive integer hyperparameter max_len")
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1 or hidden_size % n_heads:
        raise ValueError(f"sasrec needs a hyperparameter n_heads that divides hidden_size {hidden_size}")
    shapes: dict[str, tuple[int, ...]] = {
        WEIGHT_ITEMS: (n_items, hidden_size), WEIGHT_POSITIONS: (max_len, hidden_size)
    }
    for name in WEIGHT_FINAL_NORM:
        shapes[name] = (hidden_size,)
    for block in range(n_layers):
        for role, name in block_weight_names(block).items():
            shapes[name] = (hidden_size, hidden_size) if role in MATRIX_ROLES else (hidden_size,)
    return shapes


def initial_weights(n_items: int, hidden_size: int, n_blocks: int, max_len: int, seed: int) -> dict[str, np.ndarray]:
    """Embeddings ~ N(0, 1/hidden) (scaled by sqrt(hidden) on input), Glorot-uniform projections, zero biases,
    unit layer norms."""
    rng = np.random.default_rng(seed)
    shapes = weight_shapes(n_items, hidden_size, n_blocks, {"max_len": max_len, "n_heads": 1})
    weights = {}
    for name, shape in shapes.items():
        if name in (WEIGHT_ITEMS, WEIGHT_POSITIONS):
            value = rng.normal(0.0, 1.0 / np.sqrt(hidden_size), shape)
        elif len(shape) == 2:
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            value = rng.uniform(-limit, limit, shape)
        else:
            value = np.ones(shape) if name.endswith("gamma") else np.zeros(shape)
        weights[name] = value.astype(np.float32)
    return weights


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:  # (..., hidden) -> same
    centered = x - x.mean(axis=-1, keepdims=True)  # (the same operations as the textbook formula, in place)
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    centered /= np.sqrt(variance + LAYER_NORM_EPS)
    centered *= gamma
    centered += beta
    return centered


def _softmax_(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place."""
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


class SASRecNumpy:
    """Inference-only SASRec (a ``SessionModel``).

    The state of a session is its last ``max_len`` item indices plus one, oldest first, 0 for an empty slot:
    a click shifts it left and appends. Scores run the encoder over that window (causal self-attention, keys
    of empty slots masked) and take the output at the newest position. The blocks follow the widely used
    PyTorch port of SASRec: ``q = norm(x)``, ``x = q + attention(q, x, x)``, ``x = norm(x)``,
    ``x = x + ffn(x)``, empty positions zeroed after every block, a final layer norm.
    """

    family = "sasrec"

    def __init__(self, weights: Mapping[str, np.ndarray], n_heads: int) -> None:
        self.items = np.ascontiguousarray(weights[WEIGHT_ITEMS], dtype=np.float32)
        self.positions = np.asarray(weights[WEIGHT_POSITIONS], dtype=np.float32)
        self.final_norm = tuple(np.asarray(weights[n], dtype=np.float32) for n in WEIGHT_FINAL_NORM)
        self.blocks: list[dict[str, np.ndarray]] = []
        while block_weight_names(len(self.blocks))["w_q"] in weights:
            names = block_weight_names(len(self.blocks))
            self.blocks.append({role: np.asarray(weights[name], dtype=np.float32) for role, name in names.items()})
        self.n_items, self.hidden_size = self.items.shape
        self.max_len = len(self.positions)
        self.n_heads = n_heads
        self.state_size = self.window = self.max_len

    def initial_state(self, n_sessions: int) -> np.ndarray:  # (n_sessions, max_len)
        return empty_windows(n_sessions, self.max_len)

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Append clicks ``items`` (batch,) to the windows ``states`` (batch, max_len), dropping the oldest."""
        return append_clicks(states, items)

    def scores(self, states: np.ndarray) -> np.ndarray:  # (batch, max_len) -> (batch, n_items)
        return self.encode(states.astype(np.int64)) @ self.items.T

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """Output at the newest position of every window: (batch, max_len) of item index + 1 -> (batch, hidden).

        Slots that are empty in every row are masked keys whose outputs are zeroed: leaving them out changes
        nothing but float rounding (a few ulps). So the rows are encoded in groups of similar window length
        (``LENGTH_GROUPS``), each over the columns from its longest row's oldest click on: sessions are short
        (YOOCHOOSE: 3.9 clicks in the window on average), most of the ``max_len`` columns are empty.
        """
        present = windows > 0  # (batch, max_len)
        if len(windows) == 0:
            return np.zeros((0, self.hidden_size), np.float32)
        # Columns each row needs: from its oldest click to the newest slot (that one alone for an empty window).
        needed = self.max_len - np.where(present.any(axis=1), present.argmax(axis=1), self.max_len - 1)
        group = np.searchsorted(LENGTH_GROUPS, needed)
        if (group == group[0]).all():
            return self._encode_columns(windows, present, int(needed.max()))
        encoded = np.empty((len(windows), self.hidden_size), np.float32)
        for number in np.unique(group):
            rows = np.flatnonzero(group == number)
            encoded[rows] = self._encode_columns(windows[rows], present[rows], int(needed[rows].max()))
        return encoded

    def _encode_columns(self, windows: np.ndarray, present: np.ndarray, n_columns: int) -> np.ndarray:
        """``encode`` over the last ``n_columns`` slots only (every row's slots before them must be empty)."""
        windows, present = windows[:, self.max_len - n_columns :], present[:, self.max_len - n_columns :]
        x = (self.items[np.maximum(windows - 1, 0)] * np.float32(np.sqrt(self.hidden_size))
             + self.positions[self.max_len - n_columns :])
        x *= present[:, :, None]
        for number, block in enumerate(self.blocks):
            newest_only = number == len(self.blocks) - 1  # the last block is needed at the newest position only
            x = self._block(block, x, present, newest_only)
        return layer_norm(x[:, -1], *self.final_norm)

    def _block(self, w: dict[str, np.ndarray], x: np.ndarray, present: np.ndarray, newest_only: bool) -> np.ndarray:
        batch, length, hidden = x.shape
        heads, size = self.n_heads, hidden // self.n_heads
        queries_in = x[:, -1:] if newest_only else x  # (batch, n_queries, hidden)
        normed = layer_norm(queries_in, w["attn_norm_gamma"], w["attn_norm_beta"])
        q = (normed @ w["w_q"] + w["b_q"]).reshape(batch, -1, heads, size).transpose(0, 2, 1, 3)
        k = (x @ w["w_k"] + w["b_k"]).reshape(batch, length, heads, size).transpose(0, 2, 3, 1)
        v = (x @ w["w_v"] + w["b_v"]).reshape(batch, length, heads, size).transpose(0, 2, 1, 3)
        logits = q @ k  # (batch, heads, n_queries, length)
        logits *= np.float32(1.0 / np.sqrt(size))
        n_queries = q.shape[2]
        later = np.arange(length)[None, :] > np.arange(length - n_queries, length)[:, None]  # (n_queries, length)
        logits += np.where(later, np.float32(MASKED), np.float32(0.0))  # a query sees itself and earlier keys
        logits += np.where(present, np.float32(0.0), np.float32(MASKED))[:, None, None, :]  # never empty slots
        attended = _softmax_(logits) @ v  # (batch, heads, n_queries, size)
        merged = attended.transpose(0, 2, 1, 3).reshape(batch, n_queries, hidden)
        x = normed + merged @ w["w_o"] + w["b_o"]
        x = layer_norm(x, w["ffn_norm_gamma"], w["ffn_norm_beta"])
        x = x + np.maximum(x @ w["ffn_w1"] + w["ffn_b1"], 0.0) @ w["ffn_w2"] + w["ffn_b2"]
        return x * present[:, length - n_queries :, None]


def _build(weights: Mapping[str, np.ndarray], hyperparameters: Mapping[str, Any]) -> SASRecNumpy:
    return SASRecNumpy(weights, int(hyperparameters["n_heads"]))


FAMILY = Family("sasrec", weight_shapes, _build)
