"""GRU4REC training loop: session-parallel mini-batches, sampled losses, Adagrad with momentum, in TensorFlow."""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from modelkit.gru4rec import initial_weights
from offline.batching import session_parallel_batches
from offline.hyperparams import GRU4RecParams
from offline.losses import bpr_max, cross_entropy_logq
from offline.model_tf import GRU4RecTF, reset_hidden
from offline.sampling import NegativeSampler, step_items
from offline.session_arrays import SessionArrays
from offline.training_report import TrainingReport
from schemas.manifest import HyperValue

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

    def apply_rows(self, i: int, variable: tf.Variable, rows: tf.Tensor, grads: tf.Tensor) -> None:
        """Update only ``rows`` (distinct: duplicates must be summed first, the update is non-linear) by their
        gradients ``grads`` (len(rows), ...)."""
        acc = tf.gather(self.accumulators[i], rows) + tf.square(grads)
        self.accumulators[i].scatter_update(tf.IndexedSlices(acc, rows))
        step = grads / tf.sqrt(acc + ADAGRAD_EPS)
        velocity = self.momentum * tf.gather(self.velocities[i], rows) - self.learning_rate * step
        self.velocities[i].scatter_update(tf.IndexedSlices(velocity, rows))
        variable.scatter_update(tf.IndexedSlices(tf.gather(variable, rows) + velocity, rows))


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
        self.sampler = NegativeSampler(
            item_counts, params.n_sample, params.sample_alpha, np.random.default_rng(params.seed)
        )
        self.log_popularity = tf.constant(np.log(np.maximum(item_counts, 1)).astype(np.float32))
        self.rng = tf.random.Generator.from_seed(params.seed)

    def _dropout_mask(self, shape: tf.Tensor, p: float) -> tf.Tensor:
        keep = tf.cast(self.rng.uniform(shape) >= p, tf.float32)
        return keep / (1.0 - p)

    @tf.function(jit_compile=True)
    def _loss_and_gradient(
        self, scores: tf.Tensor, bias: tf.Tensor, items: tf.Tensor, counts: tf.Tensor, target_columns: tf.Tensor,
        valid: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The sampled loss, forward and backward fused by XLA -> the loss, its gradient w.r.t. ``scores`` and
        w.r.t. the items' ``bias`` (width,).

        ``scores`` (batch, batch + width), without bias, are those of the candidates: the slots' targets, then a
        step's items (sampling.StepItems) weighted by ``counts``.
        """
        p = self.params
        with tf.GradientTape() as tape:
            tape.watch([scores, bias])
            logits = scores + tf.concat([tf.gather(bias, target_columns), bias], axis=0)
            weights = tf.concat([valid, counts], axis=0)  # (batch + width,) multiplicity of each candidate
            if p.loss == "cross-entropy":
                log_q = tf.gather(self.log_popularity, items)  # (width,)
                log_q = tf.concat([tf.gather(log_q, target_columns), p.sample_alpha * log_q], axis=0)
                loss = cross_entropy_logq(logits, p.logq * log_q, weights, valid)
            else:
                loss = bpr_max(logits, weights, valid, p.bpreg, p.elu_param)
            loss = loss / float(p.batch_size)
        d_scores, d_bias = tape.gradient(loss, [scores, bias])
        return loss, d_scores, d_bias

    def _gru(self, embedded: tf.Tensor, hidden: tf.Tensor, masks: list[tf.Tensor]) -> list[tf.Tensor]:
        """New hidden state of every layer from the embedded inputs (batch, hidden) and the state (layers,
        batch, size); ``masks``: dropout of the embedding, then of each layer's output (empty: no dropout)."""
        x = embedded * masks[0] if self.params.dropout_p_embed > 0 else embedded
        layer_masks = masks[-self.n_layers :] if self.params.dropout_p_hidden > 0 else None
        return self.model.hidden_step(x, tf.unstack(hidden, num=self.n_layers), layer_masks)

    def _dropout_masks(self, batch: tf.Tensor) -> list[tf.Tensor]:
        """Dropout masks (batch, size) of the embedding and of every layer's output, where they apply."""
        p = self.params
        masks = []
        if p.dropout_p_embed > 0:
            masks.append(self._dropout_mask(tf.stack([batch, p.hidden_size]), p.dropout_p_embed))
        if p.dropout_p_hidden > 0:
            masks += [self._dropout_mask(tf.stack([batch, size]), p.dropout_p_hidden) for size in p.layers]
        return masks

    def _train_step(
        self, valid: tf.Tensor, starts: tf.Tensor, items: tf.Tensor, counts: tf.Tensor, target_columns: tf.Tensor,
        input_columns: tf.Tensor, n_candidates: tf.Tensor, n_rows: tf.Tensor, hidden: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One mini-batch (one step of sampling.StepItems): reset started slots, forward, sampled loss, backward,
        sparse/dense update.

        The candidates are the slots' targets, then the step's items weighted by their sample counts. The GRU
        runs under a tape; the scoring matmuls and their gradients are explicit (oneDNN); the loss is XLA-fused.
        """
        model = self.model
        batch = tf.shape(valid)[0]
        hidden = reset_hidden(hidden, starts)
        block = tf.gather(model.item_embedding, items)  # (width, hidden) every item row the step touches
        vectors = tf.concat([tf.gather(block, target_columns), block], axis=0)  # (batch + width, hidden)
        embedded = tf.gather(block, input_columns)  # (batch, hidden)
        masks = self._dropout_masks(batch)
        with tf.GradientTape() as tape:
            tape.watch(embedded)
            layers = self._gru(embedded, hidden, masks)
        output = layers[-1]  # (batch, hidden)
        scores = tf.matmul(output, vectors, transpose_b=True)  # (batch, batch + width)
        loss, d_scores, d_bias = self._loss_and_gradient(
            scores, tf.gather(model.item_bias, items), items, counts, target_columns, valid
        )
        d_output = tf.matmul(d_scores, vectors)  # (batch, hidden)
        d_vectors = tf.matmul(d_scores, output, transpose_a=True)  # (batch + width, hidden)
        d_embedded, *d_dense = tape.gradient(output, [embedded, *model.dense_variables], d_output)
        for i, grad in enumerate(d_dense, start=2):
            self.optimizer.apply_dense(i, self.variables[i], grad)
        # The targets' and inputs' gradients join their item's row (empty slots add zeros).
        d_block = tf.tensor_scatter_nd_add(
            d_vectors[batch:], tf.concat([target_columns, input_columns], axis=0)[:, None],
            tf.concat([d_vectors[:batch], d_embedded], axis=0),
        )
        self.optimizer.apply_rows(0, model.item_embedding, items[:n_rows], d_block[:n_rows])
        self.optimizer.apply_rows(1, model.item_bias, items[:n_candidates], d_bias[:n_candidates])
        return tf.stack(layers), loss

    @tf.function(reduce_retracing=True)
    def _train_steps(
        self, first: tf.Tensor, n_steps: tf.Tensor, valid: tf.Tensor, starts: tf.Tensor, items: tf.Tensor,
        counts: tf.Tensor, target_columns: tf.Tensor, input_columns: tf.Tensor, n_candidates: tf.Tensor,
        n_rows: tf.Tensor, hidden: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Run steps ``first`` to ``first + n_steps`` of the epoch (arrays (epoch_steps, ...): the slots, then
        sampling.StepItems) in one call; returns hidden and the per-step losses (n_steps,)."""
        losses = tf.TensorArray(tf.float32, size=n_steps)
        for t in tf.range(n_steps):
            s = first + t
            hidden, loss = self._train_step(
                valid[s], starts[s], items[s], counts[s], target_columns[s], input_columns[s], n_candidates[s],
                n_rows[s], hidden,
            )
            losses = losses.write(t, loss)
        return hidden, losses.stack()

    def fit(self, data: SessionArrays, progress: bool = True) -> TrainingReport:
        """Train for ``n_epochs`` over ``data`` (session order kept, never shuffled)."""
        p = self.params
        report = TrainingReport()
        batches = session_parallel_batches(data, p.batch_size)  # the same every epoch
        pairs = batches.valid.sum(axis=1)  # (n_steps,)
        slots = [tf.constant(batches.valid, tf.float32), tf.constant(batches.starts, tf.float32)]  # (n_steps, batch)
        for number in range(p.n_epochs):
            hidden = tf.zeros((self.n_layers, p.batch_size, p.hidden_size), tf.float32)
            loss_sum, n_pairs = 0.0, 0
            started = time.perf_counter()
            touched = step_items(self.sampler.take(batches.n_steps), batches)
            items = [
                tf.constant(array) for array in (
                    touched.items, touched.counts, touched.target_columns, touched.input_columns,
                    touched.n_candidates, touched.n_rows,
                )
            ]  # (n_steps, ...) each
            bar = tqdm(total=int(pairs.sum()), desc=f"epoch {number + 1}/{p.n_epochs}", unit="ev",
                       disable=not progress)
            for first in range(0, batches.n_steps, p.steps_per_call):
                n_steps = min(p.steps_per_call, batches.n_steps - first)
                hidden, losses = self._train_steps(tf.constant(first), tf.constant(n_steps), *slots, *items, hidden)
                loss_sum += float(np.sum(losses.numpy() * p.batch_size))
                chunk_pairs = int(pairs[first : first + n_steps].sum())
                n_pairs += chunk_pairs
                bar.update(chunk_pairs)
                bar.set_postfix(loss=f"{loss_sum / max(n_pairs, 1):.4f}")
            bar.close()
            elapsed = time.perf_counter() - started
            epoch_loss = loss_sum / max(n_pairs, 1)
            if not np.isfinite(epoch_loss):
                raise FloatingPointError(f"training diverged in epoch {number + 1} (loss {epoch_loss})")
            report.epoch_losses.append(epoch_loss)
            report.seconds += elapsed
            report.events += n_pairs
            log.info("epoch %d: loss %.5f, %.1f s, %.0f events/s", number + 1, epoch_loss, elapsed, n_pairs / elapsed)
        return report

    def weights(self) -> dict[str, np.ndarray]:
        return self.model.weights()

    def hyperparameters(self) -> dict[str, HyperValue]:
        return dict(self.params.flat())


def item_counts(data: SessionArrays, n_items: int) -> np.ndarray:
    """Training clicks per item index: (n_items,) int64."""
    return np.bincount(data.item_idx, minlength=n_items).astype(np.int64)
