"""Every model family's NumPy definition (serving, evaluation) and TensorFlow definition (training) agree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from modelkit import sasrec
from modelkit.blend import flat_members, member_part, prefixed
from modelkit.families import FAMILIES
from modelkit.family import SessionModel
from modelkit.gru4rec import gru_step, initial_weights
from offline.blend_tf import BlendTF
from offline.model_tf import GRU4RecTF
from offline.model_tf import gru_step as gru_step_tf
from offline.sasrec_tf import SASRecTF
from offline.trainable import TrainableModel

N_ITEMS = 50


@dataclass(frozen=True)
class FamilyCase:
    """One configuration of a family: random non-trivial weights, its hyperparameters, its TF definition."""

    family: str
    hyperparameters: dict[str, Any]
    weights: Callable[[np.random.Generator], dict[str, np.ndarray]]
    tensorflow: Callable[[dict[str, np.ndarray]], TrainableModel]


def _gru4rec_weights(layers: tuple[int, ...]) -> Callable[[np.random.Generator], dict[str, np.ndarray]]:
    def weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
        initial = initial_weights(n_items=N_ITEMS, layers=layers, seed=3)
        return {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in initial.items()}  # biases != 0
    return weights


def _sasrec_weights(hidden: int, blocks: int, max_len: int) -> Callable[[np.random.Generator], dict[str, np.ndarray]]:
    def weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
        initial = sasrec.initial_weights(N_ITEMS, hidden, blocks, max_len, seed=3)
        return {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in initial.items()}  # norms != 1
    return weights


def _blend_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    members = (_gru4rec_weights((16,))(rng), _sasrec_weights(16, 2, 6)(rng))
    return {**prefixed(members[0], 0), **prefixed(members[1], 1)}


def _blend_tf(weights: dict[str, np.ndarray]) -> TrainableModel:
    return BlendTF([GRU4RecTF(member_part(weights, 0)), SASRecTF(member_part(weights, 1), n_heads=2)], [0.3, 0.7])


CASES = {
    "gru4rec-1-layer": FamilyCase("gru4rec", {"layers": [16]}, _gru4rec_weights((16,)), GRU4RecTF),
    "gru4rec-2-layers": FamilyCase("gru4rec", {"layers": [12, 12]}, _gru4rec_weights((12, 12)), GRU4RecTF),
    # max_len 6 < 9 clicks: the window fills (empty slots masked) and then slides.
    "sasrec-2-blocks-2-heads": FamilyCase("sasrec", {"max_len": 6, "n_heads": 2}, _sasrec_weights(16, 2, 6),
                                          lambda weights: SASRecTF(weights, n_heads=2)),
    "blend-gru4rec-sasrec": FamilyCase("blend", flat_members([("gru4rec", 0.3, 16, 1, {"layers": [16]}),
                                                              ("sasrec", 0.7, 16, 2, {"max_len": 6, "n_heads": 2})]),
                                       _blend_weights, _blend_tf),
}


# Families without a TensorFlow definition (nothing to train) and where their NumPy model is held to a reference.
NUMPY_ONLY = {"vsknn": "tests/test_blend.py::test_the_served_knn_member_ranks_as_the_vsknn_baseline"}


def test_every_family_has_a_parity_case() -> None:
    assert {case.family for case in CASES.values()} | set(NUMPY_ONLY) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_and_tensorflow_agree_over_whole_sessions(name: str) -> None:
    case = CASES[name]
    rng = np.random.default_rng(7)
    weights = case.weights(rng)
    tf_model = case.tensorflow(weights)
    np_model: SessionModel = FAMILIES[case.family].build(weights, case.hyperparameters)
    assert np_model.n_items == N_ITEMS
    sessions = rng.integers(0, N_ITEMS, size=(6, 9))  # 6 sessions of 9 clicks, stepped in parallel
    tf_states, np_states = tf_model.initial_state(6), np_model.initial_state(6)
    assert np_states.shape == (6, np_model.state_size) and tuple(tf_states.shape) == np_states.shape
    for position in range(sessions.shape[1]):
        items = sessions[:, position]
        tf_states = tf_model.step(tf_states, tf.constant(items))
        np_states = np_model.step(np_states, items)
        tf_scores, np_scores = tf_model.scores(tf_states).numpy(), np_model.scores(np_states)
        np.testing.assert_allclose(np_states, tf_states.numpy(), atol=1e-5)
        np.testing.assert_allclose(np_scores, tf_scores, atol=1e-4)
        assert (np.argsort(-np_scores, axis=1)[:, :5] == np.argsort(-tf_scores, axis=1)[:, :5]).mean() > 0.99
    for name_, value in tf_model.weights().items():  # the TF model exports the weights it was built from
        np.testing.assert_array_equal(value, weights[name_])


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_session_steps_the_same_alone_and_in_a_batch(name: str) -> None:
    case = CASES[name]
    rng = np.random.default_rng(11)
    model = FAMILIES[case.family].build(case.weights(rng), case.hyperparameters)
    sessions = rng.integers(0, N_ITEMS, size=(4, 5))
    together = model.initial_state(4)
    alone = [model.initial_state(1) for _ in range(4)]
    for position in range(sessions.shape[1]):
        together = model.step(together, sessions[:, position])
        alone = [model.step(state, sessions[row : row + 1, position]) for row, state in enumerate(alone)]
    np.testing.assert_allclose(together, np.concatenate(alone), atol=1e-6)


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


def test_the_interface_example_runs() -> None:
    import doctest

    import modelkit.family

    result = doctest.testmod(modelkit.family)
    assert result.attempted > 0 and result.failed == 0
