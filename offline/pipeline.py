"""The offline jobs behind the CLI: train a model version, evaluate it, evaluate the baselines."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelkit.artifact import ModelArtifact, new_version_name, write_artifact
from modelkit.gru4rec import GRU4RecNumpy
from modelkit.item_index import ItemIndex
from offline.baselines import PopularityScorer, SequentialRulesScorer, VSKNNScorer
from offline.evaluate import evaluate
from offline.hyperparams import GRU4RecParams
from offline.session_arrays import SessionArrays
from schemas import ModelManifest
from schemas.manifest import TrainingWindow

if TYPE_CHECKING:
    from offline.train import TrainingReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """Test sessions restricted to a catalogue, with what the restriction dropped."""

    sessions: SessionArrays
    dropped_events: int
    dropped_sessions: int


def to_sessions(frame: pd.DataFrame, item_index: ItemIndex) -> SessionArrays:
    """Canonical event frame -> SessionArrays over ``item_index`` (unknown items become UNKNOWN_ITEM)."""
    return SessionArrays.from_columns(
        frame["session_id"].to_numpy(), frame["item_id"].to_numpy(), frame["timestamp"].to_numpy(), item_index
    )


def restrict_to_catalogue(frame: pd.DataFrame, item_index: ItemIndex, allowed: set[str] | None = None) -> EvalSet:
    """Drop events of items outside the catalogue (and ``allowed``), then sessions left with fewer than 2 events."""
    known = frame["item_id"].isin(set(item_index.ids.tolist()) if allowed is None else allowed & set(item_index.ids))
    kept = frame[known]
    length = kept.groupby("session_id")["session_id"].transform("size")
    result = kept[length >= 2]
    return EvalSet(
        to_sessions(result, item_index),
        dropped_events=int(len(frame) - len(result)),
        dropped_sessions=int(frame["session_id"].nunique() - result["session_id"].nunique()),
    )


def data_digest(frame: pd.DataFrame) -> str:
    """sha256 over the (session, item, time) triples, in a canonical order."""
    ordered = frame.sort_values(["session_id", "timestamp", "item_id"], kind="stable")
    digest = hashlib.sha256()
    for column in ("session_id", "item_id"):
        digest.update("\x1f".join(ordered[column].astype(str)).encode())
    digest.update(np.ascontiguousarray(ordered["timestamp"].to_numpy(np.float64)).tobytes())
    return digest.hexdigest()


def train_version(
    train_frame: pd.DataFrame,
    params: GRU4RecParams,
    models_dir: Path,
    valid_frame: pd.DataFrame | None = None,
    progress: bool = True,
) -> tuple[Path, TrainingReport, dict[str, float]]:
    """Train GRU4REC on ``train_frame``, evaluate on ``valid_frame`` if given, publish a new current version."""
    from offline.train import GRU4RecTrainer, item_counts  # TensorFlow is only needed here

    if len(train_frame) == 0:
        raise ValueError("the training data has no events")
    item_index = ItemIndex.from_events(train_frame["item_id"])
    train = to_sessions(train_frame, item_index)
    if not (train.lengths >= 2).any():
        raise ValueError("the training data has no session with at least 2 events")
    counts = item_counts(train, len(item_index))
    trainer = GRU4RecTrainer(params, counts)
    report = trainer.fit(train, progress=progress)
    weights = trainer.weights()
    metrics: dict[str, float] = {"train_seconds": report.seconds, "train_events_per_s": report.events_per_s}
    if valid_frame is not None:
        valid = restrict_to_catalogue(valid_frame, item_index)
        metrics.update({f"valid_{k}": v for k, v in evaluate(GRU4RecNumpy(weights), valid.sessions).items()})
    manifest = ModelManifest(
        version=new_version_name(),
        created_at=time.time(),
        training_window=TrainingWindow(
            start=float(train_frame["timestamp"].min()), end=float(train_frame["timestamp"].max())
        ),
        data_digest=data_digest(train_frame),
        hyperparameters=params.flat(),
        n_items=len(item_index),
        hidden_size=params.hidden_size,
        n_layers=len(params.layers),
        metrics=metrics,
    )
    path = write_artifact(models_dir, manifest, weights, item_index, counts)
    log.info("published model %s (%d items) to %s", manifest.version, len(item_index), path)
    return path, report, metrics


def evaluate_artifact(
    artifact: ModelArtifact, test_frame: pd.DataFrame, train_frame: pd.DataFrame | None = None
) -> tuple[dict[str, float], EvalSet]:
    """Metrics of a model version on ``test_frame``, scored against its whole catalogue.

    Test events of items outside the model's catalogue (and, with ``train_frame``, of items absent from that
    training data, so baselines and model see the same events) are dropped and counted.
    """
    allowed = None if train_frame is None else set(train_frame["item_id"].tolist())
    test = restrict_to_catalogue(test_frame, artifact.item_index, allowed)
    return evaluate(GRU4RecNumpy(artifact.weights), test.sessions), test


def evaluate_baselines(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame
) -> tuple[dict[str, dict[str, float]], EvalSet]:
    """Metrics (and fit + evaluation seconds) of every baseline trained on ``train_frame``."""
    item_index = ItemIndex.from_events(train_frame["item_id"])
    train = to_sessions(train_frame, item_index)
    test = restrict_to_catalogue(test_frame, item_index)
    results: dict[str, dict[str, float]] = {}
    for make in (PopularityScorer, SequentialRulesScorer, VSKNNScorer):
        started = time.perf_counter()
        scorer = make(train, len(item_index))
        fitted = time.perf_counter()
        metrics = evaluate(scorer, test.sessions)
        metrics["fit_seconds"] = fitted - started
        metrics["eval_seconds"] = time.perf_counter() - fitted
        results[scorer.name] = metrics
    return results, test

