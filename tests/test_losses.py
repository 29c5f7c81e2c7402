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


def test_a_candidate_of_weight_w_counts_as_w_copies() -> None:
    """Targets, then distinct samples weighted by their counts: the same loss as the samples listed out."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 7)).astype(np.float32)  # 3 targets, then 4 distinct samples
    log_q = rng.normal(size=7).astype(np.float32)
    counts = [2, 1, 3, 1]
    listed = np.concatenate([np.arange(3), 3 + np.repeat(np.arange(4), counts)])  # the samples with repeats
    rows = tf.constant([1.0, 0.0, 1.0])  # slot 1 is empty
    weighted = tf.constant([1.0, 0.0, 1.0, *counts])
    ones = tf.constant([1.0, 0.0, 1.0] + [1.0] * sum(counts))
    pairs = [
        (cross_entropy_logq(tf.constant(scores), tf.constant(log_q), weighted, rows),
         cross_entropy_logq(tf.constant(scores[:, listed]), tf.constant(log_q[listed]), ones, rows)),
        (bpr_max(tf.constant(scores), weighted, rows, 1.95, 0.5),
         bpr_max(tf.constant(scores[:, listed]), ones, rows, 1.95, 0.5)),
    ]
    for got, want in pairs:
        assert math.isclose(float(got), float(want), rel_tol=1e-5)


def test_adagrad_momentum_updates_only_the_given_rows() -> None:
    start = np.arange(8, dtype=np.float32).reshape(4, 2)
    variable = tf.Variable(start)
    optimizer = _AdagradMomentum([variable], learning_rate=0.1, momentum=0.5)
    acc = np.zeros_like(start)
    velocity = np.zeros_like(start)
    expected = start.copy()
    for rows, grads in (([2, 0], [[4.0, 1.0], [1.0, -2.0]]), ([2], [[0.5, 0.5]])):
        optimizer.apply_rows(0, variable, tf.constant(rows), tf.constant(grads))
        for row, grad in zip(rows, np.array(grads, np.float32), strict=True):
            acc[row] += grad**2
            velocity[row] = 0.5 * velocity[row] - 0.1 * grad / np.sqrt(acc[row] + 1e-6)
            expected[row] += velocity[row]
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(variable.numpy()[[1, 3]], start[[1, 3]])


def test_bpr_max_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 6))  # float64: central differences are exact enough
    weights = tf.constant([1.0, 0.0, 1.0, 2.0, 1.0, 3.0], tf.float64)
    rows = tf.constant([1.0, 0.0, 1.0], tf.float64)
    for bpreg, elu in ((0.0, 0.0), (1.95, 0.5), (0.5, 1.0)):
        x = tf.constant(scores)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = bpr_max(x, weights, rows, bpreg, elu)
        numeric = np.zeros_like(scores)
        for index in np.ndindex(scores.shape):
            step = np.zeros_like(scores)
            step[index] = 1e-6
            up, down = (float(bpr_max(tf.constant(scores + d), weights, rows, bpreg, elu)) for d in (step, -step))
            numeric[index] = (up - down) / 2e-6
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(), numeric, rtol=1e-6, atol=1e-8)
