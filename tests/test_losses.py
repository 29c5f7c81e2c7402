"""GRU4REC losses and optimizer against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from offline.losses import bpr_max, cross_entropy_logq
from offline.train import _AdagradMomentum

SCORES = np.array([[2.0, 0.0, 1.0], [1.0, 3.0, -0.5]], np.float32)  # 2 rows, targets on the diagonal, 1 sample


def _xe_by_hand(scores: np.ndarray, log_q: np.ndarray, columns: list[int]) -> float:
    total = 0.0
    for i, row in enumerate(scores):
        logits = {j: row[j] - log_q[j] for j in columns}
        total += -math.log(math.exp(logits[i]) / sum(math.exp(v) for v in logits.values()))
    return total


def test_cross_entropy_matches_softmax_by_hand() -> None:
    ones = tf.ones(3)
    got = cross_entropy_logq(tf.constant(SCORES), tf.zeros(3), ones, tf.ones(2))
    assert math.isclose(float(got), _xe_by_hand(SCORES, np.zeros(3), [0, 1, 2]), rel_tol=1e-5)


def test_cross_entropy_logq_shifts_logits_and_masks_empty_slots() -> None:
    log_q = np.log(np.array([10.0, 2.0, 5.0]))
    got = cross_entropy_logq(tf.constant(SCORES), tf.constant(log_q, tf.float32), tf.ones(3), tf.ones(2))
    assert math.isclose(float(got), _xe_by_hand(SCORES, log_q, [0, 1, 2]), rel_tol=1e-5)
    # Slot 1 is empty: its row adds nothing and its target is no negative for row 0.
    masked = cross_entropy_logq(tf.constant(SCORES), tf.zeros(3), tf.constant([1.0, 0.0, 1.0]), tf.constant([1.0, 0.0]))
    by_hand = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.0)))
    assert math.isclose(float(masked), by_hand, rel_tol=1e-5)


def _bpr_max_by_hand(scores: np.ndarray, bpreg: float, elu: float) -> float:
    act = np.where(scores > 0, scores, elu * (np.exp(np.minimum(scores, 0)) - 1)) if elu > 0 else scores
    total = 0.0
    for i, row in enumerate(act):
        negatives = [j for j in range(len(row)) if j != i]
        z = sum(math.exp(row[j]) for j in negatives)
        weights = {j: math.exp(row[j]) / z for j in negatives}
        ranking = sum(w / (1 + math.exp(-(row[i] - row[j]))) for j, w in weights.items())
        total += -math.log(ranking) + bpreg * sum(w * row[j] ** 2 for j, w in weights.items())
    return total


def test_bpr_max_excludes_the_target_from_its_softmax() -> None:
    for bpreg, elu in ((0.0, 0.0), (1.95, 0.5), (0.5, 1.0)):
        got = bpr_max(tf.constant(SCORES), tf.ones(3), tf.ones(2), bpreg, elu)
        assert math.isclose(float(got), _bpr_max_by_hand(SCORES, bpreg, elu), rel_tol=1e-5), (bpreg, elu)


def test_bpr_max_ignores_masked_candidates() -> None:
    got = bpr_max(tf.constant(SCORES), tf.constant([1.0, 1.0, 0.0]), tf.ones(2), 1.0, 0.0)
    assert math.isclose(float(got), _bpr_max_by_hand(SCORES[:, :2], 1.0, 0.0), rel_tol=1e-5)


def test_adagrad_momentum_rows_sum_duplicates_and_touch_only_their_rows() -> None:
    start = np.arange(8, dtype=np.float32).reshape(4, 2)
    variable = tf.Variable(start)
    optimizer = _AdagradMomentum([variable], learning_rate=0.1, momentum=0.5)
    grads = [
        tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, -1.0]]), tf.constant([2, 2])),  # duplicate row 2
        tf.IndexedSlices(tf.constant([[0.5, 0.5]]), tf.constant([2])),
    ]
    acc = np.zeros_like(start)
    velocity = np.zeros_like(start)
    expected = start.copy()
    dense_grads = ([[0, 0], [0, 0], [4, 1], [0, 0]], [[0, 0], [0, 0], [0.5, 0.5], [0, 0]])
    for grad, dense in zip(grads, dense_grads, strict=True):
        optimizer.apply_rows(0, variable, grad)
        g = np.array(dense, np.float32)
        acc[2] += g[2] ** 2
        velocity[2] = 0.5 * velocity[2] - 0.1 * g[2] / np.sqrt(acc[2] + 1e-6)
        expected[2] += velocity[2]
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(variable.numpy()[[0, 1, 3]], start[[0, 1, 3]])
