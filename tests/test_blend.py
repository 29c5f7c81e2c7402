"""The blend family: member probabilities combined, blend artifacts (with a V-SKNN index), warm starts, the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelkit.artifact import ArtifactError, load_artifact, member_artifacts, write_artifact
from modelkit.blend import VOTE_FLOOR, BlendNumpy
from modelkit.gru4rec import GRU4RecNumpy, initial_weights
from modelkit.item_index import ItemIndex
from offline.baselines import VSKNNScorer
from offline.blend_params import BlendParams
from offline.evaluate import ModelScorer, evaluation_ranks
from offline.hyperparams import GRU4RecParams
from offline.pipeline import build_manifest, to_sessions, train_model, train_version
from offline.sasrec_params import SASRecParams
from offline.vsknn_params import VSKNNParams
from offline.warm_start import warm_start_from
from streamrec.cli import build_parser
from streamrec.cli.common import CliError, params
from tests.support.workloads import synthetic_sessions

TINY_BLEND = BlendParams(
    gru4rec=GRU4RecParams(layers=(8,), batch_size=8, n_sample=16, n_epochs=1),
    sasrec=SASRecParams(max_len=8, hidden_size=8, n_blocks=1, n_heads=1, batch_size=16, n_epochs=1,
                        valid_fraction=0.0),
    vsknn=VSKNNParams(k=5, sample_size=20, max_len=8),
    gru4rec_weight=0.4, sasrec_weight=0.4, vsknn_weight=0.2, combine="log-probability", fit_weights=False,
)


def _frame(n_sessions: int = 80, seed: int = 1) -> pd.DataFrame:
    sessions, items, stamps = synthetic_sessions(n_sessions, n_items=20, seed=seed, max_length=6)
    return pd.DataFrame({"session_id": sessions, "item_id": items, "timestamp": stamps})


def _gru(seed: int, n_items: int = 6) -> GRU4RecNumpy:
    weights = initial_weights(n_items=n_items, layers=(4,), seed=seed)
    return GRU4RecNumpy({k: v + np.float32(0.5) * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
                         for k, v in weights.items()})


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRU4REC + SASRec + V-SKNN blend trained on synthetic sessions, published as a version directory."""
    path, _, _ = train_version(_frame(), TINY_BLEND, tmp_path_factory.mktemp("models"), progress=False)
    return path


def test_blend_combines_member_probabilities_with_normalised_weights() -> None:
    members = [_gru(0), _gru(1)]
    states = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    first, second = members[0].scores(states[:, :4]), members[1].scores(states[:, 4:])
    probability = BlendNumpy(members, [3.0, 1.0]).scores(states)
    softmax = np.exp(_log_softmax(first)), np.exp(_log_softmax(second))
    np.testing.assert_allclose(probability, 0.75 * softmax[0] + 0.25 * softmax[1], rtol=1e-5)
    log_probability = BlendNumpy(members, [3.0, 1.0], "log-probability").scores(states)
    np.testing.assert_allclose(log_probability, 0.75 * _log_softmax(first) + 0.25 * _log_softmax(second), atol=1e-5)
    assert not np.allclose(np.argsort(probability), np.argsort(members[0].scores(states[:, :4])))  # both count


def test_a_vote_member_counts_as_its_share_of_the_votes(trained: Path) -> None:
    knn = member_artifacts(load_artifact(trained))[2].model()
    states = knn.step(knn.initial_state(2), np.array([3, 5]))
    votes = knn.scores(states)
    assert (votes > 0).any() and (votes == 0).any()
    blend = BlendNumpy([knn], [1.0], "log-probability")
    np.testing.assert_allclose(blend.scores(states), np.log(votes / votes.sum(axis=1, keepdims=True) + VOTE_FLOOR),
                               rtol=1e-5)


def test_blend_rejects_mismatched_members() -> None:
    with pytest.raises(ValueError, match="same catalogue"):
        BlendNumpy([_gru(0, n_items=6), _gru(1, n_items=7)], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        BlendNumpy([_gru(0), _gru(1)], [1, -1])
    with pytest.raises(ValueError, match="one positive"):
        BlendNumpy([_gru(0), _gru(1)], [0, 0])


def test_a_member_of_weight_zero_is_stepped_but_not_scored() -> None:
    members = [_gru(0), _gru(1)]
    blend = BlendNumpy(members, [1.0, 0.0], "log-probability")
    states = blend.step(blend.initial_state(3), np.array([1, 2, 3]))
    np.testing.assert_array_equal(states[:, 4:], members[1].step(members[1].initial_state(3), np.array([1, 2, 3])))
    np.testing.assert_allclose(blend.scores(states), _log_softmax(members[0].scores(states[:, :4])), atol=1e-5)
    with pytest.raises(ValueError, match="combination"):
        BlendNumpy([_gru(0)], [1], "rank")


def test_trained_blend_artifact_serves_what_its_members_score(trained: Path) -> None:
    artifact = load_artifact(trained)
    manifest = artifact.manifest
    assert manifest.model_family == "blend" and manifest.n_layers == 3
    assert manifest.hyperparameters["combine"] == "log-probability"
    assert [manifest.hyperparameters[f"m{i}.family"] for i in range(3)] == ["gru4rec", "sasrec", "vsknn"]
    assert [manifest.hyperparameters[f"m{i}.weight"] for i in range(3)] == pytest.approx([0.4, 0.4, 0.2])
    assert artifact.weights["m2.session_item_indices"].dtype == np.int64  # the index stays integer on disk
    members = [member.model() for member in member_artifacts(artifact)]
    blend = artifact.model()
    states = blend.step(blend.step(blend.initial_state(4), np.array([0, 1, 2, 3])), np.array([4, 5, 6, 7]))
    expected = np.zeros((4, blend.n_items))
    column = 0
    for member, weight in zip(members, (0.4, 0.4, 0.2), strict=True):
        scores = member.scores(states[:, column:column + member.state_size]).astype(np.float64)
        column += member.state_size
        if member.family == "vsknn":
            expected += weight * np.log(scores / scores.sum(axis=1, keepdims=True) + VOTE_FLOOR)
        else:
            expected += weight * _log_softmax(scores)
    np.testing.assert_allclose(blend.scores(states), expected, atol=1e-4)


def test_the_served_knn_member_ranks_as_the_vsknn_baseline(trained: Path) -> None:
    artifact = load_artifact(trained)
    knn = member_artifacts(artifact)[2]
    test = to_sessions(_frame(30, seed=9), artifact.item_index)
    test = type(test)(test.item_idx.clip(0), test.timestamps, test.offsets, test.session_ids)  # every item known
    train = to_sessions(_frame(), artifact.item_index)
    baseline = VSKNNScorer(train, len(artifact.item_index), k=5, sample_size=20)
    np.testing.assert_array_equal(evaluation_ranks(ModelScorer(knn.model()), test),
                                  evaluation_ranks(baseline, test))


def test_index_weights_must_be_integer_and_consistent(trained: Path, tmp_path: Path) -> None:
    artifact = load_artifact(trained)
    weights = dict(artifact.weights)
    manifest = artifact.manifest.model_copy(update={"version": "broken"})
    negative = {**weights, "m2.session_recency": -weights["m2.session_recency"]}
    with pytest.raises(ArtifactError, match="negative"):
        write_artifact(tmp_path, manifest, negative, artifact.item_index, artifact.popularity)
    as_float = {**weights, "m2.session_item_indices": weights["m2.session_item_indices"].astype(np.float32)}
    with pytest.raises(ArtifactError, match="integer"):
        write_artifact(tmp_path, manifest, as_float, artifact.item_index, artifact.popularity)
    shuffled = {**weights, "m2.session_item_indptr": weights["m2.session_item_indptr"][::-1].copy()}
    path = write_artifact(tmp_path, manifest, shuffled, artifact.item_index, artifact.popularity)
    with pytest.raises(ValueError, match="inconsistent"):
        load_artifact(path).model()


def test_a_blend_warm_starts_member_by_member(trained: Path) -> None:
    previous = load_artifact(trained)
    index = ItemIndex([*previous.item_index.ids.tolist(), "new-item"])
    initial = warm_start_from(previous, index, TINY_BLEND, seed=0)
    assert initial is not None and not any(name.startswith("m2.") for name in initial)  # kNN: indexed anew
    old = len(previous.item_index)
    np.testing.assert_array_equal(initial["m0.item_embedding"][:old], previous.weights["m0.item_embedding"])
    np.testing.assert_array_equal(initial["m1.item_embedding"][:old], previous.weights["m1.item_embedding"])
    frame = _frame(60, seed=3)
    model = train_model(frame, TINY_BLEND, index, initial, progress=False)
    manifest = build_manifest(frame, TINY_BLEND, model, {})
    assert manifest.model_family == "blend" and manifest.n_items == old + 1


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--train", "x.tsv", "--format", "session-tsv", *argv])


def test_cli_trains_the_blend_unless_a_family_is_named() -> None:
    assert params(_args()) == BlendParams()
    assert isinstance(params(_args("--layers", "16")), GRU4RecParams)  # a family's own flag names it
    assert isinstance(params(_args("--preset", "bpr-max")), GRU4RecParams)
    seeded = params(_args("--seed", "5"))
    assert isinstance(seeded, BlendParams) and seeded.gru4rec.seed == seeded.sasrec.seed == 5
    with pytest.raises(CliError, match="add --model gru4rec or sasrec"):
        params(_args("--epochs", "3"))


def test_the_docstring_examples_run() -> None:
    import doctest

    import modelkit.blend
    import modelkit.windows
    import offline.blend_params

    for module in (modelkit.blend, modelkit.windows, offline.blend_params):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
