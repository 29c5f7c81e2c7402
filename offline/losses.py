"""GRU4REC training losses over sampled scores: cross-entropy with logQ correction, and BPR-max with ELU."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

_EPS = 1e-24
_MASKED = -1e9


def cross_entropy_logq(
    scores: tf.Tensor,  # (batch, n_candidates); column i < batch is row i's target
    log_q: tf.Tensor,  # (n_candidates,) log sampling probability of each candidate, already times logq
    candidate_weights: tf.Tensor,  # (n_candidates,) how often each candidate was drawn; 0.0 for empty slots
    row_mask: tf.Tensor,  # (batch,) 1.0 for rows that hold a session
) -> tf.Tensor:  # () summed over rows
    """Softmax cross-entropy of each row's own target among all candidates, corrected by log Q.

    A candidate of weight w counts as w copies of itself (the same loss as listing it w times).
    """
    present = candidate_weights > 0
    log_weight = tf.where(present, tf.math.log(tf.where(present, candidate_weights, 1.0)), _MASKED)
    logits = scores - log_q
    batch = tf.shape(scores)[0]
    target_logits = tf.linalg.diag_part(logits[:, :batch])
    loss = tf.reduce_logsumexp(logits + log_weight, axis=1) - target_logits
    return tf.reduce_sum(loss * row_mask)


def bpr_max(
    scores: tf.Tensor,  # (batch, n_candidates); column i < batch is row i's target
    candidate_weights: tf.Tensor,  # (n_candidates,) how often each candidate was drawn; 0.0 for empty slots
    row_mask: tf.Tensor,  # (batch,)
    bpreg: float,
    elu_param: float,
) -> tf.Tensor:  # () summed over rows
    """BPR-max: -log sum_j softmax_j * sigmoid(r_i - r_j) over negatives j, plus bpreg * sum_j softmax_j r_j^2.

    A candidate of weight w counts as w copies of itself (the same loss as listing it w times). The gradient
    w.r.t. the scores is written out: a few fused passes instead of autodiff's many.
    """
    batch = tf.shape(scores)[0]
    is_target = tf.eye(batch, tf.shape(scores)[1], dtype=scores.dtype)  # (batch, n_candidates)
    negative_weights = (1.0 - is_target) * candidate_weights

    @tf.custom_gradient
    def loss_of(scores: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        act = scores
        if elu_param > 0:
            act = tf.where(scores > 0, scores, elu_param * (tf.exp(tf.minimum(scores, 0.0)) - 1.0))
        shifted = tf.where(negative_weights > 0, act, 0.0)
        weights = tf.exp(shifted - tf.reduce_max(shifted, axis=1, keepdims=True)) * negative_weights
        weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # softmax over negatives
        target = tf.linalg.diag_part(act[:, :batch])[:, None]  # (batch, 1)
        beaten = tf.sigmoid(target - act)  # (batch, n_candidates)
        ranking = tf.reduce_sum(beaten * weights, axis=1, keepdims=True) + _EPS  # (batch, 1)
        squares = tf.reduce_sum(weights * tf.square(act), axis=1, keepdims=True)  # (batch, 1)
        loss = tf.reduce_sum((bpreg * squares - tf.math.log(ranking))[:, 0] * row_mask)

        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            # d/d act_j over negatives: w_j ((P - s_j^2) / P + bpreg (act_j^2 + 2 act_j - R)); on the target:
            # -sum_j w_j s_j (1 - s_j) / P  (s: sigmoid(target - act), P: ranking, R: squares).
            d_act = weights * ((ranking - tf.square(beaten)) / ranking + bpreg * (tf.square(act) + 2.0 * act - squares))
            d_target = -tf.reduce_sum(weights * beaten * (1.0 - beaten), axis=1, keepdims=True) / ranking
            d_act = (d_act + is_target * d_target) * (upstream * row_mask)[:, None]
            return d_act * tf.where(scores > 0, 1.0, act + elu_param) if elu_param > 0 else d_act

        return loss, gradient

    return loss_of(scores)
