"""SASRec training losses over the outputs of the non-empty positions: BCE, full and sampled cross-entropy."""

from __future__ import annotations

import tensorflow as tf

_MASKED = -1e9


def bce_one_negative(
    outputs: tf.Tensor,  # (n, hidden) encoder output of each position
    items: tf.Tensor,  # (n_items, hidden) item embedding (the output vectors)
    targets: tf.Tensor,  # (n,) next item of each position
    negatives: tf.Tensor,  # (n,) one sampled negative per position, never the target
) -> tf.Tensor:  # () mean over positions
    """Binary cross-entropy of the target (label 1) and of one negative (label 0) per position, as in SASRec."""
    positive = tf.reduce_sum(outputs * tf.gather(items, targets), axis=1)  # (n,)
    negative = tf.reduce_sum(outputs * tf.gather(items, negatives), axis=1)  # (n,)
    return tf.reduce_mean(tf.nn.softplus(-positive) + tf.nn.softplus(negative))  # -log s(p) - log(1 - s(q))


def full_cross_entropy(outputs: tf.Tensor, items: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:  # () mean
    """Softmax cross-entropy of each position's target over the whole catalogue ("SASRec+")."""
    logits = tf.matmul(outputs, items, transpose_b=True)  # (n, n_items)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))


def sampled_cross_entropy(
    outputs: tf.Tensor,  # (n, hidden)
    items: tf.Tensor,  # (n_items, hidden)
    targets: tf.Tensor,  # (n,)
    negatives: tf.Tensor,  # (n_negatives,) shared by every position; a copy of a row's target is masked out
) -> tf.Tensor:  # () mean over positions
    """Softmax cross-entropy of each position's target among itself and the shared negatives."""
    positive = tf.reduce_sum(outputs * tf.gather(items, targets), axis=1, keepdims=True)  # (n, 1)
    negative = tf.matmul(outputs, tf.gather(items, negatives), transpose_b=True)  # (n, n_negatives)
    negative += _MASKED * tf.cast(negatives[None, :] == targets[:, None], negative.dtype)
    logits = tf.concat([positive, negative], axis=1)  # (n, 1 + n_negatives); column 0 is the target
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - positive[:, 0])
