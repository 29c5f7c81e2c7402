"""Model artifacts: round trip, atomic current pointer, and refusal of broken artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from modelkit.artifact import ArtifactError, current_version, load_artifact, set_current
from modelkit.gru4rec import initial_weights
from modelkit.registry import list_versions
from tests.support.artifacts import random_artifact

N_ITEMS, HIDDEN = 7, 4


def _publish(models: Path, version: str = "v1", make_current: bool = True) -> Path:
    return random_artifact(models, version, items=[f"item{i}" for i in range(N_ITEMS)], layers=(HIDDEN,),
                           popularity=np.arange(N_ITEMS), hyperparameters={"layers": [HIDDEN], "loss": "bpr-max"},
                           created_at=1.0, window=(0.0, 10.0), make_current=make_current)


def test_round_trip_through_current(tmp_path: Path) -> None:
    _publish(tmp_path, "v1")
    artifact = load_artifact(tmp_path / "current")
    assert artifact.version == "v1" and artifact.path == (tmp_path / "v1").resolve()
    expected = initial_weights(N_ITEMS, (HIDDEN,), 0)["item_embedding"]
    np.testing.assert_array_equal(artifact.weights["item_embedding"], expected)
    assert artifact.item_index.ids.tolist() == [f"item{i}" for i in range(N_ITEMS)]
    np.testing.assert_array_equal(artifact.popularity, np.arange(N_ITEMS))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temp leftovers"


def test_current_moves_atomically_and_versions_are_listed(tmp_path: Path) -> None:
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2", make_current=False)
    assert current_version(tmp_path) == "v1"
    set_current(tmp_path, "v2")
    assert current_version(tmp_path) == "v2" and list_versions(tmp_path) == ["v1", "v2"]
    with pytest.raises(ArtifactError, match="no model version"):
        set_current(tmp_path, "v3")
    with pytest.raises(ArtifactError, match="already exists"):
        _publish(tmp_path, "v1")


def _break(tmp_path: Path, how: str) -> Path:
    path = _publish(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    if how == "truncated weights":
        data = (path / "weights.npz").read_bytes()
        (path / "weights.npz").write_bytes(data[: len(data) // 2])
    elif how == "wrong shape":
        weights = dict(np.load(path / "weights.npz"))
        weights["item_embedding"] = weights["item_embedding"][:, :3]
        np.savez(path / "weights.npz", **weights)
    elif how == "nan weights":
        weights = dict(np.load(path / "weights.npz"))
        weights["item_bias"][2] = np.nan
        np.savez(path / "weights.npz", **weights)
    elif how == "pickled popularity":
        np.save(path / "item_popularity.npy", np.array([object()] * N_ITEMS), allow_pickle=True)
    elif how == "n_items mismatch":
        manifest["n_items"] = N_ITEMS + 1
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif how == "traversal":
        manifest["files"]["weights"] = "../../etc/passwd"
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif how == "bad json":
        (path / "manifest.json").write_text("{not json")
    elif how == "missing ids":
        os.remove(path / "item_ids.json")
    elif how == "duplicate ids":
        (path / "item_ids.json").write_text(json.dumps(["a"] * N_ITEMS))
    elif how == "future format":
        manifest["artifact_format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("how", [
    "truncated weights", "wrong shape", "nan weights", "pickled popularity", "n_items mismatch", "traversal",
    "bad json", "missing ids", "duplicate ids", "future format",
])
def test_broken_artifacts_are_refused_with_one_line(tmp_path: Path, how: str) -> None:
    path = _break(tmp_path, how)
    with pytest.raises(ArtifactError) as error:
        load_artifact(path)
    assert "\n" not in str(error.value) and str(path.resolve()) in str(error.value) or "v1" in str(error.value)


def test_an_artifact_written_before_model_families_loads_as_gru4rec(tmp_path: Path) -> None:
    path = _publish(tmp_path, "v1")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest.pop("model_family") == "gru4rec"
    (path / "manifest.json").write_text(json.dumps(manifest))
    artifact = load_artifact(path)
    assert artifact.manifest.model_family == "gru4rec"
    model = artifact.model()
    assert model.family == "gru4rec" and model.n_items == N_ITEMS and model.state_size == HIDDEN
    assert model.scores(model.step(model.initial_state(1), np.array([2]))).shape == (1, N_ITEMS)


def test_an_unknown_model_family_is_refused(tmp_path: Path) -> None:
    path = _publish(tmp_path, "v1")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "model_family": "word2vec"}))
    with pytest.raises(ArtifactError, match="unknown model family 'word2vec'"):
        load_artifact(path)
