"""The NumPy serving model and the TensorFlow training model compute the same hidden states and scores."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from modelkit.gru4rec import GRU4RecNumpy, gru_step, initial_weights
from offline.model_tf import GRU4RecTF
from offline.model_tf import gru_step as gru_step_tf


@pytest.mark.parametrize("layers", [(16,), (12, 12)])
def test_numpy_and_tensorflow_agree_over_whole_sessions(layers: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    weights = initial_weights(n_items=50, layers=layers, seed=3)
    weights = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in weights.items()}  # non-zero biases
    tf_model = GRU4RecTF(weights)
    np_model = GRU4RecNumpy(weights)
    sessions = rng.integers(0, 50, size=(6, 9))  # 6 sessions of 9 clicks, stepped in parallel
    tf_hidden = [tf.zeros((6, layers[-1]))] * len(layers)
    np_model.reset(6)
    for position in range(sessions.shape[1]):
        items = sessions[:, position]
        tf_hidden = tf_model.hidden_step(tf_model.embed(tf.constant(items)), tf_hidden)
        tf_scores = tf_model.score(tf_hidden[-1]).numpy()
        np_scores = np_model.step(np.arange(6), items)
        np.testing.assert_allclose(np_model._hidden[-1], tf_hidden[-1].numpy(), atol=1e-5)
        np.testing.assert_allclose(np_scores, tf_scores, atol=1e-4)
        assert (np.argsort(-np_scores, axis=1)[:, :5] == np.argsort(-tf_scores, axis=1)[:, :5]).mean() > 0.99


def test_gru_step_matches_the_gru_equations() -> None:
    rng = np.random.default_rng(1)
    x, h = rng.normal(size=(1, 3)), rng.normal(size=(1, 2))
    w_ih, w_hh = rng.normal(size=(3, 6)), rng.normal(size=(2, 6))
    b_ih, b_hh = rng.normal(size=6), rng.normal(size=6)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sig(x @ w_ih[:, 0:2] + b_ih[0:2] + h @ w_hh[:, 0:2] + b_hh[0:2])
    z = sig(x @ w_ih[:, 2:4] + b_ih[2:4] + h @ w_hh[:, 2:4] + b_hh[2:4])
    n = np.tanh(x @ w_ih[:, 4:6] + b_ih[4:6] + r * (h @ w_hh[:, 4:6] + b_hh[4:6]))
    expected = (1 - z) * n + z * h
    np.testing.assert_allclose(gru_step(x, h, w_ih, w_hh, b_ih, b_hh), expected, atol=1e-12)
    got_tf = gru_step_tf(*(tf.constant(a) for a in (x, h, w_ih, w_hh, b_ih, b_hh))).numpy()
    np.testing.assert_allclose(got_tf, expected, atol=1e-12)
