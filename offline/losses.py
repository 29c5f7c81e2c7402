"""GRU4REC training losses over sampled scores: cross-entropy with logQ correction, and BPR-max with ELU."""

from __future__ import annotations

import tensorflow as tf

_EPS = 1e-24
_MASKED = -1e9


def cross_entropy_logq(
    scores: tf.Tensor,  # (batch, n_candidates); column i < batch is row i's target
    log_q: tf.Tensor,  # (n_candidates,) log sampling probability of each candidate, already times logq
    candidate_mask: tf.Tensor,  # (n_candidates,) 1.0 for real candidates, 0.0 for empty slots' targets
    row_mask: tf.Tensor,  # (batch,) 1.0 for rows that hold a session
) -> tf.Tensor:  # () summed over rows
    """Softmax cross-entropy of each row's own target among all candidates, corrected by log Q."""
    logits = scores - log_q + (1.0 - candidate_mask) * _MASKED
    batch = tf.shape(scores)[0]
    target_logits = tf.linalg.diag_part(logits[:, :batch])
    loss = tf.reduce_logsumexp(logits, axis=1) - target_logits
    return tf.reduce_sum(loss * row_mask)


def bpr_max(
    scores: tf.Tensor,  # (batch, n_candidates); column i < batch is row i's target
    candidate_mask: tf.Tensor,  # (n_candidates,)
    row_mask: tf.Tensor,  # (batch,)
    bpreg: float,
    elu_param: float,
) -> tf.Tensor:  # () summed over rows
    """BPR-max: -log sum_j softmax_j * sigmoid(r_i - r_j) over negatives j, plus bpreg * sum_j softmax_j r_j^2."""
    if elu_param > 0:
        scores = tf.where(scores > 0, scores, elu_param * (tf.exp(tf.minimum(scores, 0.0)) - 1.0))
    batch = tf.shape(scores)[0]
    n_candidates = tf.shape(scores)[1]
    not_target = 1.0 - tf.eye(batch, n_candidates, dtype=scores.dtype)
    negative_mask = not_target * candidate_mask  # (batch, n_candidates)
    shifted = scores * negative_mask
    weights = tf.exp(shifted - tf.reduce_max(shifted, axis=1, keepdims=True)) * negative_mask
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # softmax over negatives
    target = tf.linalg.diag_part(scores[:, :batch])[:, None]  # (batch, 1)
    ranking = -tf.math.log(tf.reduce_sum(tf.sigmoid(target - scores) * weights, axis=1) + _EPS)
    regulariser = bpreg * tf.reduce_sum(weights * tf.square(scores), axis=1)
    return tf.reduce_sum((ranking + regulariser) * row_mask)
