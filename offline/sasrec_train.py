"""SASRec training loop: sessions cut into windows, shuffled mini-batches, Adam, early stopping on new sessions."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from modelkit.sasrec import SASRecNumpy, initial_weights, weight_shapes
from offline.evaluate import ModelScorer, evaluate
from offline.sasrec_losses import bce_one_negative, full_cross_entropy, sampled_cross_entropy
from offline.sasrec_params import SASRecParams
from offline.sasrec_tf import SASRecTF
from offline.session_arrays import SessionArrays, split_newest
from offline.training_report import TrainingReport
from schemas.manifest import HyperValue

log = logging.getLogger(__name__)

ADAM_EPS = 1e-8


@dataclass
class SASRecReport(TrainingReport):
    """A training report plus the early stopping record (empty without a validation split)."""

    valid_metrics: list[dict[str, float]] = field(default_factory=list)  # one per epoch run
    best_epoch: int | None = None  # 1-based epoch of the best validation figure
    refit: bool = False  # then retrained on all sessions for best_epoch epochs (else: best epoch's weights kept)


def training_windows(data: SessionArrays, max_len: int) -> np.ndarray:  # (n_windows, max_len + 1) int64
    """Every session as windows of item index + 1, left-padded with 0: inputs ``[:, :-1]``, targets ``[:, 1:]``.

    A session of up to ``max_len + 1`` clicks is one window. A longer one is cut from its end into windows of
    ``max_len + 1`` clicks that share one click with the next window, so every click but the session's first
    is a target exactly once, its context cut at the window start. Sessions of one click give no window.
    """
    rows: list[np.ndarray] = []
    for s in range(data.n_sessions):
        items = data.session(s) + 1
        end = len(items)
        while end >= 2:
            start = max(0, end - max_len - 1)
            rows.append(items[start:end])
            end = start + 1
    windows = np.zeros((len(rows), max_len + 1), np.int64)
    for row, items in enumerate(rows):
        windows[row, max_len + 1 - len(items) :] = items
    return windows


class _Adam:
    """Adam as in PyTorch (bias-corrected moments, eps outside the square root), dense updates of every weight."""

    def __init__(self, variables: list[tf.Variable], learning_rate: float, beta1: float, beta2: float) -> None:
        self.variables = variables
        self.learning_rate, self.beta1, self.beta2 = learning_rate, beta1, beta2
        self.moments = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.squares = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.steps = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list[tf.Tensor | tf.IndexedSlices]) -> None:
        t = self.steps.assign_add(1.0)
        step_size = self.learning_rate / (1.0 - self.beta1**t)
        root_correction = tf.sqrt(1.0 - self.beta2**t)
        for variable, grad, moment, square in zip(self.variables, grads, self.moments, self.squares, strict=True):
            grad = tf.convert_to_tensor(grad)  # item rows come as IndexedSlices (gather): Adam decays every row
            m = moment.assign(self.beta1 * moment + (1.0 - self.beta1) * grad)
            v = square.assign(self.beta2 * square + (1.0 - self.beta2) * tf.square(grad))
            variable.assign_sub(step_size * m / (tf.sqrt(v) / root_correction + ADAM_EPS))


class SASRecTrainer:
    """Trains one SASRecTF on shuffled windows; ``steps_per_call`` mini-batches run in one TF call."""

    family = "sasrec"

    def __init__(
        self,
        params: SASRecParams,
        item_counts: np.ndarray,  # (n_items,) training clicks per item (only the catalogue size is used)
        initial: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.params = p = params
        self.n_items = len(item_counts)
        if p.loss == "bce" and self.n_items < 2:
            raise ValueError("the bce loss needs at least 2 items (one target, one negative)")
        expected = weight_shapes(self.n_items, p.hidden_size, p.n_blocks, p.flat())
        if initial is not None and {k: v.shape for k, v in initial.items()} != expected:
            raise ValueError("initial weights do not match the SASRec hyperparameters and catalogue")
        tf.random.set_seed(p.seed)
        weights = initial or initial_weights(self.n_items, p.hidden_size, p.n_blocks, p.max_len, p.seed)
        self.initial = weights
        self.model = SASRecTF(weights, p.n_heads, p.dropout)
        self.variables = list(self.model.named_variables().values())
        self.optimizer = _Adam(self.variables, p.learning_rate, p.adam_beta1, p.adam_beta2)
        self.rng = tf.random.Generator.from_seed(p.seed)  # dropout and negatives
        self.shuffle = np.random.default_rng(p.seed)  # window order
        self.older_weights: dict[str, np.ndarray] | None = None  # fit(): the early-stopping run's, without the newest

    def _load(self, weights: dict[str, np.ndarray]) -> None:
        for name, variable in self.model.named_variables().items():
            variable.assign(weights[name])

    def _restart(self) -> None:
        """Back to the state right after construction: initial weights, fresh Adam, generators at the seed."""
        self._load(self.initial)
        for slot in (*self.optimizer.moments, *self.optimizer.squares):
            slot.assign(tf.zeros_like(slot))
        self.optimizer.steps.assign(0.0)
        self.rng.reset_from_seed(self.params.seed)
        self.shuffle = np.random.default_rng(self.params.seed)

    def _loss(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:  # (n, hidden), (n,) -> ()
        p, items = self.params, self.model.item_embedding
        if p.loss == "cross-entropy":
            return full_cross_entropy(outputs, items, targets)
        if p.loss == "bce":  # one uniform negative per position, never its target
            negatives = self.rng.uniform(tf.shape(targets), 0, self.n_items - 1, dtype=tf.int64)
            return bce_one_negative(outputs, items, targets, negatives + tf.cast(negatives >= targets, tf.int64))
        negatives = self.rng.uniform([p.n_negatives], 0, self.n_items, dtype=tf.int64)  # (n_negatives,) shared
        if p.in_batch_negatives:
            negatives = tf.concat([negatives, targets], axis=0)
        return sampled_cross_entropy(outputs, items, targets, negatives)

    def _train_step(self, windows: tf.Tensor) -> tf.Tensor:  # (batch, width + 1) -> () mean loss per position
        inputs, targets = windows[:, :-1], windows[:, 1:]
        present = inputs > 0  # (batch, width): empty positions contribute nothing
        with tf.GradientTape() as tape:
            outputs = tf.boolean_mask(self.model.encode(inputs, self.rng), present)  # (n, hidden)
            loss = self._loss(outputs, tf.boolean_mask(targets, present) - 1)
        self.optimizer.apply(tape.gradient(loss, self.variables))
        return loss

    @tf.function(reduce_retracing=True)
    def _train_steps(self, windows: tf.Tensor, widths: tf.Tensor) -> tf.Tensor:
        """Consecutive mini-batches ``windows`` (steps, batch, width + 1) in one call, each cut to its own
        ``widths`` (steps,) input columns (its longest window): -> (steps,) losses."""
        n_steps, columns = tf.shape(windows)[0], tf.shape(windows)[2]
        losses = tf.TensorArray(tf.float32, size=n_steps)
        for t in tf.range(n_steps):
            losses = losses.write(t, self._train_step(windows[t][:, columns - widths[t] - 1 :]))
        return losses.stack()

    def _chunks(self, n_windows: int) -> Iterator[np.ndarray]:
        """A shuffled epoch as (steps, batch) window numbers: ``steps_per_call`` full batches at a time, then
        the last, smaller batch alone."""
        p = self.params
        order = self.shuffle.permutation(n_windows)
        n_full = n_windows // p.batch_size
        full = order[: n_full * p.batch_size].reshape(n_full, p.batch_size)
        for first in range(0, n_full, p.steps_per_call):
            yield full[first : first + p.steps_per_call]
        if n_full * p.batch_size < n_windows:
            yield order[n_full * p.batch_size :][None, :]

    def _validate(self, valid: SessionArrays) -> dict[str, float]:
        """Next-click metrics of the serving model (NumPy) on held-out sessions."""
        return evaluate(ModelScorer(SASRecNumpy(self.model.weights(), self.params.n_heads)), valid)

    def _epoch(self, windows: np.ndarray, lengths: np.ndarray, description: str, progress: bool) -> tuple[float, int]:
        """One shuffled pass over ``windows`` (n_windows, max_len + 1) with ``lengths`` (n_windows,) target
        positions each: (mean loss per target position, target positions)."""
        loss_sum, n_positions = 0.0, 0
        with tqdm(total=len(windows), desc=description, unit="seq", disable=not progress) as bar:
            for chunk in self._chunks(len(windows)):  # (steps, batch) window numbers
                widths = lengths[chunk].max(axis=1)  # (steps,) columns empty in a whole batch are left out
                losses = self._train_steps(tf.constant(windows[chunk][..., -(widths.max() + 1) :]),
                                           tf.constant(widths, tf.int32))  # (steps,)
                counts = lengths[chunk].sum(axis=1)  # (steps,)
                loss_sum += float(np.dot(losses.numpy(), counts))
                n_positions += int(counts.sum())
                bar.update(chunk.size)
                bar.set_postfix(loss=f"{loss_sum / n_positions:.4f}")
        return loss_sum / n_positions, n_positions

    def fit(self, data: SessionArrays, progress: bool = True) -> SASRecReport:
        """Train for up to ``n_epochs``; with a validation split, stop after ``patience`` epochs without a better
        ``stop_metric`` on the held-out newest sessions, then (``refit``) train again from the start on all
        sessions for the best number of epochs, or keep the best epoch's weights. The early-stopping run's best
        weights stay in ``older_weights`` (a model that never saw the held-out sessions)."""
        p = self.params
        train, valid = split_newest(data, p.valid_fraction)
        report = self._fit(train, valid, p.n_epochs, progress)
        if valid is not None:
            self.older_weights = self.model.weights()
        if report.best_epoch is not None and p.refit:
            log.info("refit on all %d sessions for %d epochs", data.n_sessions, report.best_epoch)
            self._restart()
            again = self._fit(data, None, report.best_epoch, progress)
            report.epoch_losses += again.epoch_losses
            report.seconds += again.seconds
            report.events += again.events
            report.refit = True
        return report

    def _fit(self, train: SessionArrays, valid: SessionArrays | None, n_epochs: int, progress: bool) -> SASRecReport:
        """Up to ``n_epochs`` on ``train``; with ``valid``, early stopping that keeps the best epoch's weights."""
        p = self.params
        windows = training_windows(train, p.max_len)  # (n_windows, max_len + 1)
        if len(windows) == 0:
            raise ValueError("no session with at least 2 events to train on")
        lengths = (windows[:, :-1] > 0).sum(axis=1)  # (n_windows,)
        report = SASRecReport()
        best_score, best_weights, stale = -math.inf, None, 0
        for epoch in range(n_epochs):
            started = time.perf_counter()
            epoch_loss, n_positions = self._epoch(windows, lengths, f"epoch {epoch + 1}/{n_epochs}", progress)
            if not np.isfinite(epoch_loss):
                raise FloatingPointError(f"training diverged in epoch {epoch + 1} (loss {epoch_loss})")
            report.epoch_losses.append(epoch_loss)
            report.events += n_positions
            if valid is None:
                report.seconds += time.perf_counter() - started
                log.info("epoch %d: loss %.5f, %.1f s", epoch + 1, epoch_loss, time.perf_counter() - started)
                continue
            report.valid_metrics.append(self._validate(valid))
            score = report.valid_metrics[-1][p.stop_metric]
            report.seconds += time.perf_counter() - started
            log.info("epoch %d: loss %.5f, valid %s %.4f, %.1f s", epoch + 1, epoch_loss, p.stop_metric, score,
                     time.perf_counter() - started)
            if score > best_score:
                best_score, best_weights, stale = score, self.model.weights(), 0
                report.best_epoch = epoch + 1
            else:
                stale += 1
                if stale >= p.patience:
                    log.info("early stop: best %s %.4f in epoch %d", p.stop_metric, best_score, report.best_epoch)
                    break
        if best_weights is not None:
            self._load(best_weights)
        return report

    def weights(self) -> dict[str, np.ndarray]:
        return self.model.weights()

    def hyperparameters(self) -> dict[str, HyperValue]:
        return dict(self.params.flat())
