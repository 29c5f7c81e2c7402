"""GRU4REC training end to end on synthetic sessions: it learns, it is seedable, it publishes a loadable artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from modelkit.artifact import load_artifact
from modelkit.gru4rec import GRU4RecNumpy, initial_weights
from modelkit.item_index import ItemIndex
from offline.baselines import PopularityScorer
from offline.batching import session_parallel_batches
from offline.evaluate import ModelScorer, evaluate
from offline.hyperparams import GRU4RecParams
from offline.losses import bpr_max, cross_entropy_logq
from offline.model_tf import GRU4RecTF
from offline.pipeline import evaluate_artifact, to_sessions, train_version
from offline.sampling import NegativeSampler
from offline.session_arrays import SessionArrays
from offline.train import GRU4RecTrainer, item_counts
from tests.support.workloads import synthetic_sessions

SMALL = dict(layers=(32,), batch_size=16, n_sample=64, n_epochs=3, steps_per_call=16)


def _frame(n_sessions: int, seed: int) -> pd.DataFrame:
    sids, items, times = synthetic_sessions(n_sessions, n_items=60, seed=seed)
    return pd.DataFrame({"session_id": sids, "item_id": items, "timestamp": times})


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_gru4rec_learns_the_chain_and_beats_popularity(loss: str) -> None:
    train_frame, test_frame = _frame(600, seed=1), _frame(150, seed=2)
    index = ItemIndex.from_events(train_frame["item_id"])
    train = to_sessions(train_frame, index)
    test = to_sessions(test_frame[test_frame["item_id"].isin(set(index.ids))], index)
    params = GRU4RecParams(loss=loss, logq=1.0 if loss == "cross-entropy" else 0.0, **SMALL)  # type: ignore[arg-type]
    trainer = GRU4RecTrainer(params, item_counts(train, len(index)))
    report = trainer.fit(train, progress=False)
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert report.events == 3 * int((train.lengths - 1).sum())
    model = evaluate(ModelScorer(GRU4RecNumpy(trainer.weights())), test)
    popularity = evaluate(PopularityScorer(train, len(index)), test)
    assert model["recall@5"] > 0.6 > popularity["recall@5"] + 0.3


def _reference_epoch(params: GRU4RecParams, train: SessionArrays, counts: np.ndarray,
                     weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One epoch the plain way: every sample a column of its own, autodiff, Adagrad with momentum in NumPy on the
    item rows of the batch (its samples, its slots' targets and inputs) and on every dense weight."""
    model = GRU4RecTF(weights)
    batches = session_parallel_batches(train, params.batch_size)
    samples = NegativeSampler(counts, params.n_sample, params.sample_alpha, np.random.default_rng(params.seed))
    drawn = samples.take(batches.n_steps)
    log_pop = np.log(np.maximum(counts, 1)).astype(np.float32)
    variables = [model.item_embedding, model.item_bias, *model.dense_variables]
    acc = [np.zeros(v.shape, np.float32) for v in variables]
    velocity = [np.zeros(v.shape, np.float32) for v in variables]
    hidden = np.zeros((params.batch_size, params.hidden_size), np.float32)
    for t in range(batches.n_steps):
        valid = batches.valid[t]
        hidden = hidden * ~batches.starts[t][:, None]
        candidates = np.concatenate([batches.targets[t], drawn[t]])
        mask = tf.constant(np.concatenate([valid, np.ones(params.n_sample)]), tf.float32)
        rows = tf.constant(valid, tf.float32)
        with tf.GradientTape() as tape:
            output = model.hidden_step(model.embed(batches.inputs[t]), [tf.constant(hidden)])[-1]
            scores = model.score(output, tf.constant(candidates))
            if params.loss == "cross-entropy":
                log_q = np.concatenate([log_pop[batches.targets[t]], params.sample_alpha * log_pop[drawn[t]]])
                loss = cross_entropy_logq(scores, tf.constant(params.logq * log_q), mask, rows)
            else:
                loss = bpr_max(scores, mask, rows, params.bpreg, params.elu_param)
            loss = loss / params.batch_size
        hidden = output.numpy()
        item_rows = set(drawn[t]) | set(batches.targets[t][valid])
        touched = [sorted(item_rows | set(batches.inputs[t][valid])), sorted(item_rows)]
        for i, (variable, grad) in enumerate(zip(variables, tape.gradient(loss, variables), strict=True)):
            grad = tf.convert_to_tensor(grad).numpy()  # duplicate item rows summed
            where = touched[i] if i < 2 else slice(None)
            acc[i][where] += grad[where] ** 2
            step = grad[where] / np.sqrt(acc[i][where] + 1e-6)
            velocity[i][where] = params.momentum * velocity[i][where] - params.learning_rate * step
            update = np.zeros_like(grad)
            update[where] = velocity[i][where]
            variable.assign(variable.numpy() + update)
    return model.weights()


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_an_epoch_matches_the_plain_recipe(loss: str) -> None:
    """Distinct items with multiplicities, fused gradients and row bookkeeping change nothing but speed."""
    frame = _frame(40, seed=6)
    index = ItemIndex.from_events(frame["item_id"])
    train = to_sessions(frame, index)
    counts = item_counts(train, len(index))
    params = GRU4RecParams(
        loss=loss, layers=(8,), batch_size=6, n_sample=20, n_epochs=1, steps_per_call=5,  # type: ignore[arg-type]
        dropout_p_embed=0.0, dropout_p_hidden=0.0, logq=1.0 if loss == "cross-entropy" else 0.0,
    )
    weights = initial_weights(len(index), params.layers, params.seed)
    trainer = GRU4RecTrainer(params, counts, initial=weights)
    trainer.fit(train, progress=False)
    expected = _reference_epoch(params, train, counts, weights)
    for name, value in trainer.weights().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_training_is_deterministic_for_a_seed() -> None:
    frame = _frame(100, seed=3)
    index = ItemIndex.from_events(frame["item_id"])
    train = to_sessions(frame, index)
    runs = []
    for seed in (5, 5, 6):
        trainer = GRU4RecTrainer(GRU4RecParams(seed=seed, **SMALL), item_counts(train, len(index)))  # type: ignore[arg-type]
        trainer.fit(train, progress=False)
        runs.append(trainer.weights()["item_embedding"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(runs[0], runs[2])


def test_train_version_publishes_and_evaluates(tmp_path: Path) -> None:
    train_frame, valid_frame = _frame(200, seed=4), _frame(50, seed=5)
    params = GRU4RecParams(**SMALL)  # type: ignore[arg-type]
    path, _, metrics = train_version(train_frame, params, tmp_path, valid_frame, progress=False)
    artifact = load_artifact(tmp_path / "current")
    assert artifact.path == path and artifact.manifest.hyperparameters["layers"] == [32]
    assert artifact.manifest.training_window.end == train_frame["timestamp"].max()
    again, _ = evaluate_artifact(artifact, valid_frame, train_frame)
    assert again["recall@20"] == pytest.approx(metrics["valid_recall@20"])
