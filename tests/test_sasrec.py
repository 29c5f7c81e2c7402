"""SASRec training: windows, losses against hand computation, padding, learning, early stopping, seeds, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from modelkit.artifact import load_artifact
from modelkit.item_index import ItemIndex
from modelkit.sasrec import WEIGHT_POSITIONS, SASRecNumpy, initial_weights
from offline.baselines import PopularityScorer
from offline.evaluate import ModelScorer, evaluate
from offline.sasrec_losses import bce_one_negative, full_cross_entropy, sampled_cross_entropy
from offline.sasrec_params import BCE_RECIPE, SASRecParams
from offline.sasrec_tf import SASRecTF
from offline.sasrec_train import SASRecTrainer, training_windows
from offline.session_arrays import SessionArrays, split_newest
from offline.train import item_counts
from streamrec.cli import main
from tests.support.workloads import synthetic_sessions

N_ITEMS = 30
TINY = SASRecParams(max_len=8, hidden_size=16, n_blocks=1, n_heads=2, dropout=0.1, batch_size=32, n_epochs=2,
                    valid_fraction=0.0, steps_per_call=4, seed=3)
TINY_FLAGS = ["--model", "sasrec", "--max-len", "8", "--hidden", "16", "--blocks", "1", "--heads", "2",
              "--batch-size", "32", "--epochs", "2", "--valid-fraction", "0"]


def chain_sessions(n_sessions: int, seed: int, n_items: int = N_ITEMS) -> SessionArrays:
    """Noisy item chains (i -> i + 1) over items "0".."n_items-1", indexed by their number."""
    sids, items, times = synthetic_sessions(n_sessions, n_items=n_items, seed=seed)
    return SessionArrays.from_columns(sids, items, times, ItemIndex([str(i) for i in range(n_items)]))


def sessions_of(*sequences: list[int]) -> SessionArrays:
    sids = [f"s{n}" for n, seq in enumerate(sequences) for _ in seq]
    items = [str(i) for seq in sequences for i in seq]
    return SessionArrays.from_columns(np.array(sids), np.array(items), np.arange(len(items), dtype=float),
                                      ItemIndex([str(i) for i in range(N_ITEMS)]))


def test_windows_are_left_padded_and_long_sessions_cut_so_each_click_is_a_target_once() -> None:
    data = sessions_of([5, 6, 7], [9], list(range(12)))  # max_len 4: the 12-click session gives 3 windows
    windows = training_windows(data, max_len=4)
    assert windows.tolist() == [
        [0, 0, 6, 7, 8],  # item index + 1, newest last
        [8, 9, 10, 11, 12],  # clicks 7..11: inputs 7..10, targets 8..11
        [4, 5, 6, 7, 8],  # clicks 3..7: targets 4..7
        [0, 1, 2, 3, 4],  # clicks 0..3: targets 1..3
    ]
    targets = windows[:, 1:][windows[:, :-1] > 0] - 1
    assert targets[:2].tolist() == [6, 7] and sorted(targets[2:].tolist()) == list(range(1, 12))


def test_split_newest_holds_out_the_last_sessions() -> None:
    data = sessions_of([1, 2], [3, 4, 5], [6, 7], [8, 9])
    older, newest = split_newest(data, 0.5)
    assert newest is not None and older.n_sessions == newest.n_sessions == 2
    assert [older.session(s).tolist() for s in range(2)] == [[1, 2], [3, 4, 5]]
    assert [newest.session(s).tolist() for s in range(2)] == [[6, 7], [8, 9]]
    assert split_newest(data, 0.0) == (data, None)
    assert split_newest(sessions_of([1, 2], [3]), 0.5)[1] is None  # no held-out session to evaluate


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_losses_match_hand_computation() -> None:
    rng = np.random.default_rng(0)
    outputs, items = rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
    targets, negatives = np.array([1, 4, 1]), np.array([0, 2, 5])
    scores = outputs @ items.T  # (3, 6)
    rows = np.arange(3)
    bce = np.mean(-np.log(_sigmoid(scores[rows, targets])) - np.log(1 - _sigmoid(scores[rows, negatives])))
    full = np.mean(-_log_softmax(scores)[rows, targets])
    shared = np.array([4, 3, 0])  # a copy of row 1's target (4) is masked out of row 1's negatives
    candidates = [[targets[row], *(j for j in shared if j != targets[row])] for row in rows]  # target first
    sampled = np.mean([-_log_softmax(scores[row : row + 1, candidates[row]])[0, 0] for row in rows])
    h, e, t = tf.constant(outputs), tf.constant(items), tf.constant(targets)
    np.testing.assert_allclose(bce_one_negative(h, e, t, tf.constant(negatives)).numpy(), bce, rtol=1e-10)
    np.testing.assert_allclose(full_cross_entropy(h, e, t).numpy(), full, rtol=1e-10)
    np.testing.assert_allclose(sampled_cross_entropy(h, e, t, tf.constant(shared)).numpy(), sampled, rtol=1e-10)


def test_bce_negatives_are_uniform_over_the_other_items(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = SASRecTrainer(TINY.model_copy(update={"loss": "bce"}), np.ones(5))
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(outputs: Any, items: Any, targets: Any, negatives: Any) -> Any:
        seen.append((targets.numpy(), negatives.numpy()))
        return bce_one_negative(outputs, items, targets, negatives)

    monkeypatch.setattr("offline.sasrec_train.bce_one_negative", spy)
    trainer._loss(tf.zeros((5000, 16)), tf.constant(np.arange(5000) % 5, tf.int64))
    targets, negatives = seen[0]
    assert not (negatives == targets).any()
    for target in range(5):  # each of the 4 other items about a quarter of the time
        counts = np.bincount(negatives[targets == target], minlength=5)
        assert counts[target] == 0 and (np.delete(counts, target) > 200).all()


def test_empty_slots_change_nothing_and_get_no_gradient() -> None:
    weights = initial_weights(N_ITEMS, 8, 2, max_len=6, seed=1)
    model = SASRecTF(weights, n_heads=1)
    trimmed, padded = tf.constant([[4, 9, 2]], tf.int64), tf.constant([[0, 0, 0, 4, 9, 2]], tf.int64)
    np.testing.assert_allclose(model.encode(padded)[:, 3:].numpy(), model.encode(trimmed).numpy(), atol=1e-6)
    trainer = SASRecTrainer(TINY.model_copy(update={"max_len": 6, "hidden_size": 8, "n_blocks": 2, "n_heads": 1,
                                                     "dropout": 0.0}), np.ones(N_ITEMS), initial=weights)
    windows = tf.constant([[0, 0, 4, 9, 2, 7, 1], [0, 0, 0, 0, 0, 3, 5]], tf.int64)  # inputs: slots 2..5 used
    with tf.GradientTape() as tape:
        outputs = tf.boolean_mask(trainer.model.encode(windows[:, :-1]), windows[:, :-1] > 0)  # (5, hidden)
        loss = trainer._loss(outputs, tf.boolean_mask(windows[:, 1:], windows[:, :-1] > 0) - 1)
    grad = tf.convert_to_tensor(tape.gradient(loss, trainer.model.position_embedding)).numpy()  # (max_len, hidden)
    assert np.abs(grad[:2]).max() == 0.0 and (np.abs(grad[2:]).max(axis=1) > 0).all()


def test_dropout_is_active_only_in_training() -> None:
    model = SASRecTF(initial_weights(N_ITEMS, 8, 1, max_len=4, seed=2), n_heads=1, dropout_rate=0.5)
    windows = tf.constant([[0, 3, 4, 5]], tf.int64)
    assert np.array_equal(model.encode(windows).numpy(), model.encode(windows).numpy())
    rng = tf.random.Generator.from_seed(0)
    assert not np.allclose(model.encode(windows, rng).numpy(), model.encode(windows).numpy())


@pytest.mark.parametrize("loss", ["cross-entropy", "sampled-cross-entropy", "bce"])
def test_training_on_chains_beats_popularity(loss: str) -> None:
    train, test = chain_sessions(300, seed=1), chain_sessions(60, seed=2)
    params = TINY.model_copy(update={"loss": loss, "n_negatives": 16, "in_batch_negatives": True, "n_epochs": 6,
                                     "learning_rate": 5e-3})
    trainer = SASRecTrainer(params, item_counts(train, N_ITEMS))
    report = trainer.fit(train, progress=False)
    assert len(report.epoch_losses) == 6 and report.epoch_losses[-1] < report.epoch_losses[0]
    model = evaluate(ModelScorer(SASRecNumpy(trainer.weights(), params.n_heads)), test)
    popularity = evaluate(PopularityScorer(train, N_ITEMS), test)
    assert model["mrr@20"] > 2 * popularity["mrr@20"] and model["recall@5"] > 0.6


def test_seed_determinism() -> None:
    data = chain_sessions(100, seed=4)
    runs = []
    for seed in (5, 5, 6):
        trainer = SASRecTrainer(TINY.model_copy(update={"seed": seed}), item_counts(data, N_ITEMS))
        trainer.fit(data, progress=False)
        runs.append(trainer.weights())
    assert all(np.array_equal(runs[0][name], runs[1][name]) for name in runs[0])
    assert not np.array_equal(runs[0][WEIGHT_POSITIONS], runs[2][WEIGHT_POSITIONS])


def test_early_stopping_keeps_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    data = chain_sessions(100, seed=5)
    params = TINY.model_copy(update={"n_epochs": 10, "valid_fraction": 0.2, "patience": 2, "stop_metric": "mrr@20",
                                     "refit": False})
    trainer = SASRecTrainer(params, item_counts(data, N_ITEMS))
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # best in epoch 2, then two epochs without improvement
    after_epoch: list[dict[str, np.ndarray]] = []
    held_out: list[int] = []

    def validate(valid: SessionArrays) -> dict[str, float]:
        after_epoch.append(trainer.weights())
        held_out.append(valid.n_sessions)
        return {"mrr@20": next(scripted)}

    monkeypatch.setattr(trainer, "_validate", validate)
    report = trainer.fit(data, progress=False)
    assert report.best_epoch == 2 and len(report.epoch_losses) == 4 and held_out == [20] * 4
    final = trainer.weights()
    assert all(np.array_equal(final[name], after_epoch[1][name]) for name in final)
    assert not np.array_equal(final[WEIGHT_POSITIONS], after_epoch[3][WEIGHT_POSITIONS])


def test_refit_trains_again_from_the_start_on_all_sessions_for_the_best_epoch_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = chain_sessions(100, seed=6)
    params = TINY.model_copy(update={"n_epochs": 10, "valid_fraction": 0.2, "patience": 1, "refit": True})
    trainer = SASRecTrainer(params, item_counts(data, N_ITEMS))
    initial = trainer.weights()
    scripted = iter([0.1, 0.3, 0.2])  # best in epoch 2
    monkeypatch.setattr(trainer, "_validate", lambda valid: {"ndcg@20": next(scripted)})
    runs: list[tuple[int, bool, int, bool, float]] = []
    fit_once = trainer._fit

    def spy(train: SessionArrays, valid: SessionArrays | None, n_epochs: int, progress: bool) -> Any:
        from_start = all(np.array_equal(v, initial[name]) for name, v in trainer.weights().items())
        runs.append((train.n_sessions, valid is not None, n_epochs, from_start, float(trainer.optimizer.steps)))
        return fit_once(train, valid, n_epochs, progress)

    monkeypatch.setattr(trainer, "_fit", spy)
    report = trainer.fit(data, progress=False)
    assert runs == [(80, True, 10, True, 0.0), (100, False, 2, True, 0.0)]
    assert report.best_epoch == 2 and report.refit and len(report.epoch_losses) == 3 + 2


def test_presets_and_manifest_fields() -> None:
    assert (BCE_RECIPE.loss, BCE_RECIPE.hidden_size, BCE_RECIPE.max_len, BCE_RECIPE.n_blocks, BCE_RECIPE.n_heads,
            BCE_RECIPE.dropout, BCE_RECIPE.learning_rate, BCE_RECIPE.batch_size, BCE_RECIPE.n_epochs) == (
        "bce", 50, 50, 2, 1, 0.5, 1e-3, 128, 10)
    flat = SASRecParams().flat()
    assert {"max_len", "n_heads", "hidden_size", "n_blocks", "loss"} <= set(flat)
    json.dumps(flat)
    with pytest.raises(ValueError, match="n_heads"):
        SASRecParams(hidden_size=10, n_heads=3)


def _write_tsv(path: Path, n_sessions: int, seed: int) -> Path:
    sids, items, times = synthetic_sessions(n_sessions, n_items=N_ITEMS, seed=seed)
    lines = ["SessionId\tItemId\tTime", *(f"{s}\t{i}\t{float(t)!r}" for s, i, t in zip(sids, items, times,
                                                                                       strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_trains_a_sasrec_artifact_that_loads_and_evaluates(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    train, valid = _write_tsv(tmp_path / "train.tsv", 150, seed=1), _write_tsv(tmp_path / "valid.tsv", 40, seed=2)
    models = tmp_path / "models"
    assert main(["--no-progress", "train", "--train", str(train), "--valid", str(valid), "--format", "session-tsv",
                 "--out", str(models), *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sasrec model ") and "sasrec (valid)" in out
    artifact = load_artifact(models / "current")
    manifest = artifact.manifest
    assert manifest.model_family == "sasrec" and isinstance(artifact.model(), SASRecNumpy)
    assert (manifest.hidden_size, manifest.n_layers, manifest.hyperparameters["max_len"],
            manifest.hyperparameters["n_heads"]) == (16, 1, 8, 2)
    assert main(["evaluate", "--model", str(models / "current"), "--test", str(valid), "--format", "session-tsv",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recall@20"] == pytest.approx(manifest.metrics["valid_recall@20"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "sasrec", "--momentum", "0.1"], "--momentum applies to gru4rec, not sasrec"),
    (["--model", "gru4rec", "--hidden", "8"], "--hidden applies to sasrec, not gru4rec"),
    (["--preset", "sasrec-bce", "--layers", "8"], "--layers applies to gru4rec, not sasrec"),
    (["--model", "gru4rec", "--preset", "sasrec-bce"], "--preset sasrec-bce is a sasrec setting, not gru4rec"),
    (["--model", "sasrec", "--loss", "bpr-max"], "invalid loss"),
    (["--model", "sasrec", "--hidden", "10", "--heads", "3"], "n_heads (3) must divide hidden_size (10)"),
])
def test_cli_refuses_hyperparameters_of_the_other_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    train = _write_tsv(tmp_path / "train.tsv", 20, seed=1)
    assert main(["train", "--train", str(train), "--format", "session-tsv", "--out", str(tmp_path / "m"),
                 *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("streamrec")]
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "m").exists()
