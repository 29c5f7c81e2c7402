"""GRU4REC training end to end on synthetic sessions: it learns, it is seedable, it publishes a loadable artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelkit.artifact import load_artifact
from modelkit.gru4rec import GRU4RecNumpy
from modelkit.item_index import ItemIndex
from offline.baselines import PopularityScorer
from offline.evaluate import ModelScorer, evaluate
from offline.hyperparams import GRU4RecParams
from offline.pipeline import evaluate_artifact, to_sessions, train_version
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
