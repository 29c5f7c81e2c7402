"""Model artifacts for tests and benchmarks: one random GRU4REC builder, a quick trained model, loading."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkit.artifact import load_artifact, write_artifact
from modelkit.gru4rec import initial_weights
from modelkit.item_index import ItemIndex
from schemas import ModelManifest
from schemas.manifest import TrainingWindow
from stream_worker.serving import ServingModel
from tests.support.workloads import RSC15_DIR


def random_artifact(
    models_dir: Path,
    version: str = "v1",
    *,
    items: Sequence[str] | int = 40,
    layers: Sequence[int] = (8,),
    seed: int = 0,
    noise: float = 0.0,
    noise_seed: int | None = None,
    popularity: np.ndarray | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    created_at: float = 0.0,
    window: tuple[float, float] = (0.0, 1.0),
    make_current: bool = True,
) -> Path:
    """Write a GRU4REC artifact with random weights as ``models_dir/<version>`` (and ``current`` if asked).

    Weights are ``initial_weights(n_items, layers, seed)``, plus N(0, ``noise``) from
    ``default_rng(noise_seed)`` (default: ``seed``) when ``noise`` > 0 (non-zero biases, so rows can be told apart).
    ``items`` are the item ids, or a count of ids ``i0``, ``i1``, ...; ``popularity`` defaults to
    ``n_items-1 .. 0`` (the first items most popular); ``hyperparameters`` default to ``{"layers": [...]}``.
    """
    item_ids = [f"i{n}" for n in range(items)] if isinstance(items, int) else list(items)
    n_items = len(item_ids)
    weights = initial_weights(n_items, tuple(layers), seed=seed)
    if noise > 0:
        rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
        weights = {k: (v + rng.normal(0, noise, v.shape)).astype(np.float32) for k, v in weights.items()}
    manifest = ModelManifest(
        version=version, created_at=created_at, training_window=TrainingWindow(start=window[0], end=window[1]),
        data_digest="0" * 64,
        hyperparameters=dict(hyperparameters) if hyperparameters is not None else {"layers": list(layers)},
        n_items=n_items, hidden_size=layers[-1], n_layers=len(layers),
    )
    if popularity is None:
        popularity = np.arange(n_items)[::-1].copy()
    return write_artifact(models_dir, manifest, weights, ItemIndex(item_ids), popularity, make_current)


def train_model(models_dir: Path, data_dir: Path = RSC15_DIR) -> Path:
    """GRU4REC on YOOCHOOSE train_tr with n_epochs=2 (as the e2e tests), published as ``models_dir/current``."""
    from offline.hyperparams import GRU4RecParams
    from offline.loaders import load_events
    from offline.pipeline import train_version

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    path, _, _ = train_version(frame, GRU4RecParams(n_epochs=2), models_dir, progress=False)
    return path


def load_model(models_dir: Path) -> ServingModel:
    """The serving model of ``models_dir/current``."""
    return ServingModel(load_artifact(models_dir / "current"))
