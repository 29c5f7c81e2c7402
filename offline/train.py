"""GRU4REC training loop: session-parallel mini-batches, sampled losses, Adagrad with momentum, in TensorFlow."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from modelkit.gru4rec import initial_weights
from offline.batching import MiniBatch, session_parallel_batches
from offline.hyperparams import GRU4RecParams
from offline.losses import bpr_max, cross_entropy_logq
from offline.model_tf import GRU4RecTF, reset_hidden
from offline.sampling import SampleCache
from offline.session_arrays import SessionArrays
from offline.training_report import TrainingReport

log = logging.getLogger(__name__)

ADAGRAD_EPS = 1e-6


class _AdagradMomentum:
    """Adagrad with momentum as in the official GRU4Rec (IndexedAdagradM); item rows are updated sparsely."""

    def __init__(self, variables: list[tf.Variable], learning_rate: float, momentum: float) -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.accumulators = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.velocities = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

    def apply_dense(self, i: int, variable: tf.Variable, grad: tf.Tensor) -> None:
        acc = self.accumulators[i].assign_add(tf.square(grad))
        step = grad / tf.sqrt(acc + ADAGRAD_EPS)
        velocity = self.velocities[i].assign(self.momentum * self.velocities[i] - self.learning_rate * step)
        variable.assign_add(velocity)

    def apply_rows(self, i: int, variable: tf.Variable, grad: tf.IndexedSlices) -> None:
        """Update only the rows in ``grad``; duplicate indices are summed first (the update is non-linear)."""
        rows, position = tf.unique(grad.indices)
        values = tf.math.unsorted_segment_sum(grad.values, position, tf.size(rows))
        acc = tf.gather(self.accumulators[i], rows) + tf.square(values)
        self.accumulators[i].scatter_update(tf.IndexedSlices(acc, rows))
        step = values / tf.sqrt(acc + ADAGRAD_EPS)
        velocity = self.momentum * tf.gather(self.velocities[i], rows) - self.learning_rate * step
        self.velocities[i].scatter_update(tf.IndexedSlices(velocity, rows))
        variable.scatter_add(tf.IndexedSlices(velocity, rows))


class GRU4RecTrainer:
    """Trains one GRU4RecTF on session-parallel mini-batches; ``steps_per_call`` steps run in one TF call."""

    family = "gru4rec"

    def __init__(
        self,
        params: GRU4RecParams,
        item_counts: np.ndarray,  # (n_items,) training clicks per item (popularity)
        initial: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.params = params
        n_items = len(item_counts)
        tf.random.set_seed(params.seed)
        self.model = GRU4RecTF(initial or initial_weights(n_items, params.layers, params.seed))
        self.n_layers = len(self.model.gru_layers)
        self.variables = [self.model.item_embedding, self.model.item_bias, *self.model.dense_variables]
        self.optimizer = _AdagradMomentum(self.variables, params.learning_rate, params.momentum)
        self.samples = SampleCache(
            item_counts, params.n_sample, params.sample_alpha, np.random.default_rng(params.seed)
        )
        self.log_popularity = tf.constant(np.log(np.maximum(item_counts, 1)).astype(np.float32))
        self.rng = tf.random.Generator.from_seed(params.seed)

    def _dropout_mask(self, shape: tf.Tensor, p: float) -> tf.Tensor:
        keep = tf.cast(self.rng.uniform(shape) >= p, tf.float32)
        return keep / (1.0 - p)

    def _loss(self, scores: tf.Tensor, targets: tf.Tensor, samples: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        p = self.params
        candidate_mask = tf.concat([valid, tf.ones(tf.shape(samples), tf.float32)], axis=0)
        if p.loss == "cross-entropy":
            log_q = tf.concat(
                [tf.gather(self.log_popularity, targets), p.sample_alpha * tf.gather(self.log_popularity, samples)],
                axis=0,
            )
            return cross_entropy_logq(scores, p.logq * log_q, candidate_mask, valid)
        return bpr_max(scores, candidate_mask, valid, p.bpreg, p.elu_param)

    def _train_step(
        self, inputs: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor, starts: tf.Tensor, samples: tf.Tensor,
        hidden: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One mini-batch: reset started slots, forward, sampled loss, backward (one step), sparse/dense update."""
        p = self.params
        hidden = reset_hidden(hidden, starts)
        candidates = tf.concat([targets, samples], axis=0)  # (batch + n_sample,)
        batch = tf.shape(inputs)[0]
        masks = [self._dropout_mask(tf.stack([batch, size]), p.dropout_p_hidden) for size in p.layers]
        with tf.GradientTape() as tape:
            x = self.model.embed(inputs)
            if p.dropout_p_embed > 0:
                x = x * self._dropout_mask(tf.shape(x), p.dropout_p_embed)
            layers = tf.unstack(tf.stop_gradient(hidden), num=self.n_layers)
            new_hidden = self.model.hidden_step(x, layers, masks if p.dropout_p_hidden > 0 else None)
            scores = self.model.score(new_hidden[-1], candidates)  # (batch, batch + n_sample)
            loss = self._loss(scores, targets, samples, valid) / float(p.batch_size)
        grads = tape.gradient(loss, self.variables)
        for i, (variable, grad) in enumerate(zip(self.variables, grads, strict=True)):
            if isinstance(grad, tf.IndexedSlices):
                self.optimizer.apply_rows(i, variable, grad)
            else:
                self.optimizer.apply_dense(i, variable, grad)
        return tf.stack(new_hidden), loss

    @tf.function(reduce_retracing=True)
    def _train_steps(
        self, inputs: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor, starts: tf.Tensor, samples: tf.Tensor,
        hidden: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Run ``len(inputs)`` consecutive mini-batches in one compiled call; returns hidden and per-step losses."""
        n_steps = tf.shape(inputs)[0]
        losses = tf.TensorArray(tf.float32, size=n_steps)
        for t in tf.range(n_steps):
            hidden, loss = self._train_step(inputs[t], targets[t], valid[t], starts[t], samples[t], hidden)
            losses = losses.write(t, loss)
        return hidden, losses.stack()

    def _chunks(self, data: SessionArrays) -> Iterator[tuple[list[MiniBatch], np.ndarray]]:
        chunk: list[MiniBatch] = []
        for batch in session_parallel_batches(data, self.params.batch_size):
            chunk.append(batch)
            if len(chunk) == self.params.steps_per_call:
                yield chunk, self.samples.take(len(chunk))
                chunk = []
        if chunk:
            yield chunk, self.samples.take(len(chunk))

    def fit(self, data: SessionArrays, progress: bool = True) -> TrainingReport:
        """Train for ``n_epochs`` over ``data`` (session order kept, never shuffled)."""
        p = self.params
        report = TrainingReport()
        events_per_epoch = int((data.lengths[data.lengths >= 2] - 1).sum())
        for epoch in range(p.n_epochs):
            hidden = tf.zeros((self.n_layers, p.batch_size, p.hidden_size), tf.float32)
            loss_sum, n_pairs = 0.0, 0
            started = time.perf_counter()
            bar = tqdm(total=events_per_epoch, desc=f"epoch {epoch + 1}/{p.n_epochs}", unit="ev", disable=not progress)
            for chunk, samples in self._chunks(data):
                valid = np.stack([b.valid for b in chunk]).astype(np.float32)  # (steps, batch)
                hidden, losses = self._train_steps(
                    tf.constant(np.stack([b.inputs for b in chunk]), tf.int64),
                    tf.constant(np.stack([b.targets for b in chunk]), tf.int64),
                    tf.constant(valid),
                    tf.constant(np.stack([b.starts for b in chunk]).astype(np.float32)),
                    tf.constant(samples, tf.int64),
                    hidden,
                )
                pairs = valid.sum(axis=1)  # (steps,)
                loss_sum += float(np.sum(losses.numpy() * p.batch_size))
                n_pairs += int(pairs.sum())
                bar.update(int(pairs.sum()))
                bar.set_postfix(loss=f"{loss_sum / max(n_pairs, 1):.4f}")
            bar.close()
            elapsed = time.perf_counter() - started
            epoch_loss = loss_sum / max(n_pairs, 1)
            if not np.isfinite(epoch_loss):
                raise FloatingPointError(f"training diverged in epoch {epoch + 1} (loss {epoch_loss})")
            report.epoch_losses.append(epoch_loss)
            report.seconds += elapsed
            report.events += n_pairs
            log.info("epoch %d: loss %.5f, %.1f s, %.0f events/s", epoch + 1, epoch_loss, elapsed, n_pairs / elapsed)
        return report

    def weights(self) -> dict[str, np.ndarray]:
        return self.model.weights()


def item_counts(data: SessionArrays, n_items: int) -> np.ndarray:
    """Training clicks per item index: (n_items,) int64."""
    return np.bincount(data.item_idx, minlength=n_items).astype(np.int64)
