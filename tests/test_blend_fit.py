"""Blend weights fitted on held-out sessions: the grid, the choice rule, ranks as evaluation ranks them, training."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from modelkit.blend import BlendNumpy
from modelkit.gru4rec import GRU4RecNumpy, initial_weights
from modelkit.item_index import ItemIndex
from offline.blend_fit import choose_weights, fit_weights, held_out_ranks, weight_grid
from offline.blend_params import BlendParams
from offline.evaluate import ModelScorer, evaluation_ranks
from offline.hyperparams import GRU4RecParams
from offline.pipeline import to_sessions, train_model
from offline.sasrec_params import SASRecParams
from offline.vsknn_params import VSKNNParams
from tests.support.workloads import synthetic_sessions


def _frame(n_sessions: int, seed: int, n_items: int = 20) -> pd.DataFrame:
    sessions, items, stamps = synthetic_sessions(n_sessions, n_items=n_items, seed=seed, max_length=6)
    return pd.DataFrame({"session_id": sessions, "item_id": items, "timestamp": stamps})


def _ranks(*rows: list[int]) -> np.ndarray:  # (n_candidates, n_predictions)
    return np.array(rows, dtype=np.int64)


def test_the_grid_covers_the_simplex_with_every_member_alone() -> None:
    grid = weight_grid(3, 0.1)
    assert grid.shape == (66, 3) and np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert {tuple(row) for row in np.eye(3)} <= {tuple(row) for row in grid}
    with pytest.raises(ValueError, match="divides 1"):
        weight_grid(2, 0.3)


def test_the_prior_stays_when_no_weighting_is_clearly_better() -> None:
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.7, 0.3]])  # last: the prior
    ranks = _ranks([3, 30, 2, 40], [30, 3, 40, 2], [2, 3, 2, 3], [2, 3, 2, 4])
    fit = choose_weights(ranks, candidates, [0.7, 0.3], tolerance=0.1)
    assert fit.weights == (0.7, 0.3)  # within 10 % of the best (0.5 / 0.5) on both metrics: the prior wins
    assert fit.mrr == fit.prior_mrr and fit.recall == 1.0
    strict = choose_weights(ranks, candidates, [0.7, 0.3], tolerance=0.0)
    assert strict.weights == (0.5, 0.5) and strict.mrr > strict.prior_mrr


def test_a_blend_worse_than_its_best_member_gives_way_to_it() -> None:
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    ranks = _ranks([1, 2, 1, 50], [60, 70, 80, 90], [2, 5, 3, 60], [2, 5, 3, 60])  # the second member drags
    fit = choose_weights(ranks, candidates, [0.5, 0.5], tolerance=0.005)
    assert fit.weights == (1.0, 0.0)
    assert (fit.recall, fit.mrr) == (fit.best_member_recall, fit.best_member_mrr)
    assert fit.prior_mrr < fit.mrr
    with pytest.raises(ValueError, match="prior last"):
        choose_weights(ranks, candidates, [0.3, 0.7], tolerance=0.0)


def test_held_out_ranks_are_the_evaluation_ranks_of_each_weighting() -> None:
    sessions = to_sessions(_frame(40, seed=4), ItemIndex([str(i) for i in range(20)]))
    members = [GRU4RecNumpy(initial_weights(n_items=20, layers=(6,), seed=seed)) for seed in (0, 1)]
    candidates = weight_grid(2, 0.25)
    for combine in ("probability", "log-probability"):
        ranks = held_out_ranks(members, sessions, candidates, combine, max_predictions=10_000)
        for row, weights in zip(ranks, candidates, strict=True):
            expected = evaluation_ranks(ModelScorer(BlendNumpy(members, list(weights), combine)), sessions)
            np.testing.assert_array_equal(row, expected[expected >= 0])


def test_held_out_ranks_keep_the_newest_whole_sessions_up_to_the_cap() -> None:
    sessions = to_sessions(_frame(40, seed=4), ItemIndex([str(i) for i in range(20)]))
    members = [GRU4RecNumpy(initial_weights(n_items=20, layers=(6,), seed=0))]
    everything = held_out_ranks(members, sessions, np.ones((1, 1)), "probability", max_predictions=10_000)
    newest = (sessions.lengths - 1)[-5:].sum()  # next clicks of the newest 5 sessions
    capped = held_out_ranks(members, sessions, np.ones((1, 1)), "probability", max_predictions=int(newest))
    np.testing.assert_array_equal(capped, everything[:, -newest:])


def test_the_runs_of_one_family_share_its_weight() -> None:
    sessions = to_sessions(_frame(40, seed=4), ItemIndex([str(i) for i in range(20)]))
    members = [GRU4RecNumpy(initial_weights(n_items=20, layers=(6,), seed=seed)) for seed in (0, 1, 2)]
    fit = fit_weights(members, sessions, [0.1, 0.1, 0.8], families=[0, 0, 1], combine="log-probability", step=0.25,
                      tolerance=0.0, max_predictions=10_000)
    candidates = np.vstack([weight_grid(2, 0.25), [0.2, 0.8]])  # the grid is over the two families
    ranks = held_out_ranks(members, sessions, candidates[:, [0, 0, 1]] / [2, 2, 1], "log-probability", 10_000)
    by_family = choose_weights(ranks, candidates, [0.2, 0.8], tolerance=0.0).weights
    assert fit.weights == pytest.approx((by_family[0] / 2, by_family[0] / 2, by_family[1]))


def test_training_fits_the_weights_on_the_newest_sessions(caplog: pytest.LogCaptureFixture) -> None:
    """A prior that trusts an untrained GRU4REC gives way to V-SKNN on clicks that follow an item chain; SASRec's
    early-stopping run (same held-out sessions) is reused rather than trained again."""
    frame = _frame(300, seed=2, n_items=100)
    params = BlendParams(
        gru4rec=GRU4RecParams(layers=(4,), batch_size=8, n_sample=8, n_epochs=1, learning_rate=1e-6),
        sasrec=SASRecParams(max_len=6, hidden_size=8, batch_size=16, n_epochs=2, valid_fraction=0.2, patience=1),
        vsknn=VSKNNParams(k=20, sample_size=100, max_len=6),
        gru4rec_weight=0.8, sasrec_weight=0.1, vsknn_weight=0.1, fit_fraction=0.2, fit_step=0.1,
    )
    with caplog.at_level(logging.INFO, logger="offline.pipeline"):
        model = train_model(frame, params, ItemIndex.from_events(frame["item_id"]), progress=False)
    weights = [float(model.hyperparameters[f"m{i}.weight"]) for i in range(3)]  # type: ignore[arg-type]
    assert weights[2] > 0.1 and weights[0] < 0.8 and sum(weights) == pytest.approx(1)
    assert model.metrics["blend_fit_mrr@20"] > model.metrics["blend_prior_mrr@20"]
    assert model.metrics["blend_fit_predictions"] > 0
    own_runs = [r.message for r in caplog.records if "without the newest" in r.message]
    assert len(own_runs) == 2 and not any("sasrec" in message for message in own_runs)
    fixed = train_model(frame, params.model_copy(update={"fit_weights": False}),
                        ItemIndex.from_events(frame["item_id"]), progress=False)
    assert [fixed.hyperparameters[f"m{i}.weight"] for i in range(3)] == pytest.approx([0.8, 0.1, 0.1])
    assert "blend_fit_mrr@20" not in fixed.metrics
