"""Warm start: learned rows survive bit-exactly, new items get fresh rows, dead items go, sizes must match."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelkit import sasrec
from modelkit.artifact import ModelArtifact, load_artifact
from modelkit.gru4rec import (
    WEIGHT_BIAS,
    WEIGHT_EMBEDDING,
    GRU4RecNumpy,
    initial_weights,
    layer_weight_names,
    weight_shapes,
)
from modelkit.item_index import ItemIndex
from offline.evaluate import ModelScorer
from offline.hyperparams import GRU4RecParams
from offline.pipeline import to_sessions
from offline.sasrec_params import SASRecParams
from offline.warm_start import (
    CatalogueChange,
    catalogue_change,
    warm_start_from,
    warm_start_index,
    warm_start_weights,
)
from tests.support.artifacts import random_artifact

LAYERS = (8,)
OLD_ITEMS = [f"old{i}" for i in range(6)]


@pytest.fixture()
def previous(tmp_path: Path) -> ModelArtifact:
    """A 'trained' version: random weights, non-zero biases, so copies can be told from fresh rows."""
    path = random_artifact(tmp_path, "v1", items=OLD_ITEMS, layers=LAYERS, seed=11, noise=0.3, noise_seed=3,
                           popularity=np.arange(len(OLD_ITEMS)), hyperparameters=GRU4RecParams(layers=LAYERS).flat(),
                           created_at=1.0)
    return load_artifact(path)


def test_index_keeps_known_items_first_and_drops_or_keeps_missing_ones() -> None:
    previous = ItemIndex(OLD_ITEMS)
    window = ["new1", "old3", "old0", "new0", "old3", "new1", "old5"]
    dropped = warm_start_index(previous, window)
    assert dropped.ids.tolist() == ["old0", "old3", "old5", "new1", "new0"]
    assert catalogue_change(previous, dropped) == CatalogueChange(kept=3, added=2, dropped=3)
    kept = warm_start_index(previous, window, keep_missing_items=True)
    assert kept.ids.tolist() == [*OLD_ITEMS, "new1", "new0"]
    assert catalogue_change(previous, kept).dropped == 0


def test_old_rows_survive_bit_exactly_and_new_items_get_fresh_rows(previous: ModelArtifact) -> None:
    params = GRU4RecParams(layers=LAYERS)
    index = warm_start_index(previous.item_index, ["old4", "new0", "old1", "new1", "old0"])
    weights = warm_start_weights(previous, index, params, seed=7)

    shapes = weight_shapes(len(index), LAYERS[-1], len(LAYERS), {"layers": list(LAYERS)})
    assert {k: v.shape for k, v in weights.items()} == shapes
    assert all(v.dtype == np.float32 for v in weights.values())
    old = previous.weights
    for item in ("old0", "old1", "old4"):
        new_row, old_row = index.get(item), previous.item_index.get(item)
        assert np.array_equal(weights[WEIGHT_EMBEDDING][new_row], old[WEIGHT_EMBEDDING][old_row])
        assert weights[WEIGHT_BIAS][new_row] == old[WEIGHT_BIAS][old_row]
    fresh = initial_weights(len(index), LAYERS, seed=7)
    for item in ("new0", "new1"):
        row = index.get(item)
        assert np.array_equal(weights[WEIGHT_EMBEDDING][row], fresh[WEIGHT_EMBEDDING][row])
        assert weights[WEIGHT_BIAS][row] == 0.0
        assert not any(np.array_equal(weights[WEIGHT_EMBEDDING][row], r) for r in old[WEIGHT_EMBEDDING])
    for name in layer_weight_names(0):
        assert np.array_equal(weights[name], old[name]) and weights[name] is not old[name]
    assert len(index) == 5  # old2, old3 and old5 (absent from the window) are gone

    # The warm-started model scores known items exactly as the previous one did.
    before, after = ModelScorer(GRU4RecNumpy(old)), ModelScorer(GRU4RecNumpy(weights))
    before.reset(1)
    after.reset(1)
    rows = np.zeros(1, np.int64)
    for item in ("old4", "old1"):
        old_scores = before.step(rows, np.array([previous.item_index.get(item)]))
        new_scores = after.step(rows, np.array([index.get(item)]))
        for known in ("old0", "old1", "old4"):
            assert old_scores[0, previous.item_index.get(known)] == new_scores[0, index.get(known)]


def test_warm_start_trains_on_top(previous: ModelArtifact) -> None:
    from offline.train import GRU4RecTrainer, item_counts  # TensorFlow

    params = GRU4RecParams(layers=LAYERS, batch_size=4, n_sample=8, n_epochs=1, steps_per_call=4)
    frame = pd.DataFrame({"session_id": ["a", "a", "a", "b", "b", "c", "c"],
                          "item_id": ["old0", "new0", "old1", "new0", "old0", "old1", "new1"],
                          "timestamp": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    index = warm_start_index(previous.item_index, frame["item_id"])
    sessions = to_sessions(frame, index)
    initial = warm_start_weights(previous, index, params, seed=params.seed)
    trainer = GRU4RecTrainer(params, item_counts(sessions, len(index)), initial=initial)
    trainer.fit(sessions, progress=False)
    trained = trainer.weights()
    assert trained[WEIGHT_EMBEDDING].shape == (len(index), LAYERS[-1])
    assert not np.array_equal(trained[layer_weight_names(0)[0]], initial[layer_weight_names(0)[0]])


@pytest.mark.parametrize("layers", [(16,), (8, 8)])
def test_refuses_different_layer_sizes(previous: ModelArtifact, layers: tuple[int, ...]) -> None:
    index = warm_start_index(previous.item_index, ["old0", "new0"])
    with pytest.raises(ValueError, match=r"layers \[8\] differ") as error:
        warm_start_weights(previous, index, GRU4RecParams(layers=layers), seed=0)
    assert "\n" not in str(error.value)


@pytest.fixture()
def previous_sasrec(tmp_path: Path) -> ModelArtifact:
    path = random_artifact(tmp_path, "s1", family="sasrec", items=OLD_ITEMS, layers=(8,), max_len=6, n_heads=2,
                           seed=12, noise=0.3, noise_seed=4, created_at=1.0)
    return load_artifact(path)


SASREC = SASRecParams(hidden_size=8, n_blocks=1, max_len=6, n_heads=2)


def test_sasrec_rows_carry_over_by_item_id_and_blocks_are_copied(previous_sasrec: ModelArtifact) -> None:
    index = warm_start_index(previous_sasrec.item_index, ["old4", "new0", "old1", "new1", "old0"])
    weights = warm_start_from(previous_sasrec, index, SASREC, seed=7)
    assert weights is not None
    assert {k: v.shape for k, v in weights.items()} == sasrec.weight_shapes(len(index), 8, 1, SASREC.flat())
    old = previous_sasrec.weights
    for item in ("old0", "old1", "old4"):
        row, old_row = index.get(item), previous_sasrec.item_index.get(item)
        assert np.array_equal(weights[sasrec.WEIGHT_ITEMS][row], old[sasrec.WEIGHT_ITEMS][old_row])
    fresh = sasrec.initial_weights(len(index), 8, 1, 6, seed=7)
    for row in (index.get("new0"), index.get("new1")):
        assert np.array_equal(weights[sasrec.WEIGHT_ITEMS][row], fresh[sasrec.WEIGHT_ITEMS][row])
    for name in old:
        if name != sasrec.WEIGHT_ITEMS:
            assert np.array_equal(weights[name], old[name]) and weights[name] is not old[name]
    # The warm-started model scores known items exactly as the previous one did after the same clicks.
    before, after = previous_sasrec.model(), sasrec.SASRecNumpy(weights, n_heads=2)
    old_state, new_state = before.initial_state(1), after.initial_state(1)
    for item in ("old4", "old1", "old0"):
        old_state = before.step(old_state, np.array([previous_sasrec.item_index.get(item)]))
        new_state = after.step(new_state, np.array([index.get(item)]))
    old_scores, new_scores = before.scores(old_state), after.scores(new_state)
    for known in ("old0", "old1", "old4"):
        assert old_scores[0, previous_sasrec.item_index.get(known)] == new_scores[0, index.get(known)]


@pytest.mark.parametrize(("change", "logged"), [
    ({"hidden_size": 16}, "hidden size 8 -> 16"), ({"max_len": 10}, "max_len 6 -> 10"),
    ({"n_blocks": 2}, "blocks 1 -> 2"), ({"n_heads": 1}, "heads 2 -> 1"),
])
def test_sasrec_of_other_sizes_trains_from_scratch_with_a_log_line(
    previous_sasrec: ModelArtifact, caplog: pytest.LogCaptureFixture, change: dict[str, int], logged: str
) -> None:
    index = warm_start_index(previous_sasrec.item_index, ["old0", "new0"])
    with caplog.at_level(logging.INFO, logger="offline.warm_start"):
        assert warm_start_from(previous_sasrec, index, SASREC.model_copy(update=change), seed=0) is None
    assert logged in caplog.text and "from scratch" in caplog.text


def test_another_family_trains_from_scratch(previous: ModelArtifact, previous_sasrec: ModelArtifact,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="offline.warm_start"):
        assert warm_start_from(previous, ItemIndex(OLD_ITEMS), SASREC, seed=0) is None
        assert warm_start_from(previous_sasrec, ItemIndex(OLD_ITEMS), GRU4RecParams(layers=LAYERS), seed=0) is None
    assert "a gru4rec model) for a sasrec candidate" in caplog.text
    assert "a sasrec model) for a gru4rec candidate" in caplog.text
    assert warm_start_from(previous, ItemIndex(OLD_ITEMS), GRU4RecParams(layers=LAYERS), seed=0) is not None
