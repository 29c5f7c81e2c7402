"""The offline jobs: train a model version (one training call, one manifest builder), evaluate it, the baselines."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelkit.artifact import ModelArtifact, write_artifact
from modelkit.blend import flat_members, member_part, prefixed
from modelkit.families import family_named
from modelkit.family import SessionModel
from modelkit.item_index import ItemIndex
from modelkit.registry import new_version_name
from offline.baselines import PopularityScorer, SequentialRulesScorer, VSKNNScorer
from offline.blend_fit import fit_weights
from offline.blend_params import BlendParams, MemberParams, member_family, member_layers
from offline.evaluate import ModelScorer, evaluate
from offline.hyperparams import GRU4RecParams
from offline.protocols import NEXT_CLICK, EvalProtocol, last_item_sessions
from offline.sasrec_params import SASRecParams
from offline.session_arrays import SessionArrays, split_newest
from offline.training_report import BlendReport, TrainingReport
from offline.vsknn_params import VSKNNParams
from offline.vsknn_train import VSKNNTrainer
from schemas import ModelManifest
from schemas.manifest import GateValue, HyperValue, TrainingWindow

if TYPE_CHECKING:
    from offline.trainable import Trainer

log = logging.getLogger(__name__)

TrainingParams = GRU4RecParams | SASRecParams | BlendParams  # the family is the params' type


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


@dataclass(frozen=True)
class TrainedModel:
    """The outcome of one training run: a family's weights over ``item_index``, training clicks per item, the report."""

    family: str
    hyperparameters: dict[str, HyperValue]
    weights: dict[str, np.ndarray]
    item_index: ItemIndex
    counts: np.ndarray  # (n_items,) training clicks per item index (the artifact's popularity)
    report: TrainingReport
    fit_metrics: dict[str, float] = field(default_factory=dict)  # a blend's weight fit (WeightFit.metrics)

    def model(self) -> SessionModel:
        """The NumPy model of these weights, as the artifact will load it (for evaluation)."""
        return family_named(self.family).build(self.weights, self.hyperparameters)

    @property
    def metrics(self) -> dict[str, float]:
        """The training figures every manifest records (a fitted blend's: also the held-out figures of its fit)."""
        return {"train_seconds": self.report.seconds, "train_events_per_s": self.report.events_per_s,
                **self.fit_metrics}


def train_model(
    train_frame: pd.DataFrame,
    params: TrainingParams,
    item_index: ItemIndex,
    initial: dict[str, np.ndarray] | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train the family of ``params`` (GRU4RecParams: GRU4REC, SASRecParams: SASRec, BlendParams: each member
    in turn) on ``train_frame`` over ``item_index``, from ``initial`` weights (warm start) or from scratch.

    The one training call of ``streamrec train`` and of a retrain cycle. A blend's ``initial`` holds its members'
    weights under their ``m{i}.`` prefixes; a member without any trains from scratch.
    """
    from offline.train import item_counts  # TensorFlow is only needed here

    sessions = to_sessions(train_frame, item_index)
    if not (sessions.lengths >= 2).any():
        raise ValueError("the training data has no session with at least 2 events")
    counts = item_counts(sessions, len(item_index))
    if not isinstance(params, BlendParams):
        trainer = _trainer(params, counts, initial)
        report = trainer.fit(sessions, progress=progress)
        return TrainedModel(trainer.family, trainer.hyperparameters(), trainer.weights(), item_index, counts, report)
    return _train_blend(sessions, params, item_index, counts, initial, progress)


def _train_blend(sessions: SessionArrays, params: BlendParams, item_index: ItemIndex, counts: np.ndarray,
                 initial: dict[str, np.ndarray] | None, progress: bool) -> TrainedModel:
    """Each member in turn on all ``sessions``; with ``fit_weights``, also without the newest sessions, whose next
    clicks then choose the members' weights (``offline.blend_fit``; the report's seconds include all of it)."""
    started = time.perf_counter()
    older, held_out = split_newest(sessions, params.fit_fraction) if params.fit_weights else (sessions, None)
    if params.fit_weights and held_out is None:
        log.warning("too few sessions to hold out for fitting blend weights: the prior weights are kept")
    weights: dict[str, np.ndarray] = {}
    reports: list[TrainingReport] = []
    members: list[tuple[str, int, int, dict[str, HyperValue]]] = []
    older_models: list[SessionModel] = []
    for number, (member, _) in enumerate(params.members()):
        start = member_part(initial, number) if initial else None
        trainer = _trainer(member, counts, start)
        log.info("blend member %d of %d: %s", number + 1, params.n_members, trainer.family)
        reports.append(trainer.fit(sessions, progress=progress))
        weights.update(prefixed(trainer.weights(), number))
        members.append((trainer.family, member.hidden_size, member_layers(member), trainer.hyperparameters()))
        if held_out is not None:
            older_models.append(_older_model(member, counts, start, trainer, older, params.fit_fraction, progress))
    shares = [share for _, share in params.members()]
    fit_metrics: dict[str, float] = {}
    if held_out is not None:
        family_names = [family for family, *_ in members]
        numbers = {family: number for number, family in enumerate(dict.fromkeys(family_names))}
        fit = fit_weights(older_models, held_out, shares, [numbers[family] for family in family_names],
                          params.combine, params.fit_step, params.fit_tolerance, params.fit_max_predictions)
        log.info("blend weights %s (prior %s): held-out Recall@20 %.4f / MRR@20 %.4f (prior %.4f / %.4f, best "
                 "member %.4f / %.4f, %d next clicks)", _rounded(fit.weights), _rounded(shares), fit.recall, fit.mrr,
                 fit.prior_recall, fit.prior_mrr, fit.best_member_recall, fit.best_member_mrr, fit.n_predictions)
        shares, fit_metrics = list(fit.weights), fit.metrics()
    report = BlendReport.of(reports)
    report.seconds = time.perf_counter() - started  # the members' runs, the runs without the newest, the fit
    flat = flat_members([(family, share, hidden_size, n_layers, hyperparameters) for (
        family, hidden_size, n_layers, hyperparameters), share in zip(members, shares, strict=True)], params.combine)
    return TrainedModel("blend", flat, weights, item_index, counts, report, fit_metrics)


def _older_model(member: MemberParams, counts: np.ndarray, initial: dict[str, np.ndarray] | None, trainer: Trainer,
                 older: SessionArrays, fraction: float, progress: bool) -> SessionModel:
    """``member`` trained on the ``older`` sessions only: SASRec's early-stopping run when it held out the same
    newest ``fraction``, else a run of its own from the same start."""
    reused = getattr(trainer, "older_weights", None)  # SASRecTrainer's
    if isinstance(member, SASRecParams) and member.valid_fraction == fraction and reused is not None:
        weights, hyperparameters = reused, trainer.hyperparameters()
    else:
        own = _trainer(member, counts, initial)
        log.info("blend member %s without the newest %.0f%% of the sessions", own.family, fraction * 100)
        own.fit(older, progress=progress)
        weights, hyperparameters = own.weights(), own.hyperparameters()
    return family_named(member_family(member)).build(weights, hyperparameters)


def _rounded(weights: Sequence[float]) -> list[float]:
    return [round(float(weight), 3) for weight in weights]


def _trainer(params: MemberParams, counts: np.ndarray, initial: dict[str, np.ndarray] | None) -> Trainer:
    from offline.sasrec_train import SASRecTrainer
    from offline.train import GRU4RecTrainer

    if isinstance(params, VSKNNParams):
        return VSKNNTrainer(params, counts)
    if isinstance(params, SASRecParams):
        return SASRecTrainer(params, counts, initial=initial or None)
    return GRU4RecTrainer(params, counts, initial=initial or None)


def build_manifest(
    train_frame: pd.DataFrame,
    params: TrainingParams,
    model: TrainedModel,
    metrics: Mapping[str, float],
    *,
    parent_version: str | None = None,
    gate: dict[str, GateValue] | None = None,
) -> ModelManifest:
    """The manifest of a new version trained on ``train_frame``: a fresh name, training metrics, then ``metrics``."""
    return ModelManifest(
        version=new_version_name(),
        created_at=time.time(),
        training_window=TrainingWindow(
            start=float(train_frame["timestamp"].min()), end=float(train_frame["timestamp"].max())
        ),
        data_digest=data_digest(train_frame),
        model_family=model.family,
        hyperparameters=model.hyperparameters,
        n_items=len(model.item_index),
        hidden_size=params.hidden_size,
        n_layers=params.n_members if isinstance(params, BlendParams) else member_layers(params),
        metrics={**model.metrics, **metrics},
        parent_version=parent_version,
        gate=gate,
    )


def train_version(
    train_frame: pd.DataFrame,
    params: TrainingParams,
    models_dir: Path,
    valid_frame: pd.DataFrame | None = None,
    progress: bool = True,
) -> tuple[Path, TrainingReport, dict[str, float]]:
    """Train the family of ``params`` on ``train_frame``, evaluate on ``valid_frame`` if given, publish a new
    current version."""
    if len(train_frame) == 0:
        raise ValueError("the training data has no events")
    model = train_model(train_frame, params, ItemIndex.from_events(train_frame["item_id"]), progress=progress)
    metrics = model.metrics
    if valid_frame is not None:
        valid = restrict_to_catalogue(valid_frame, model.item_index)
        valid_metrics = evaluate(ModelScorer(model.model()), valid.sessions)
        metrics.update({f"valid_{k}": v for k, v in valid_metrics.items()})
    manifest = build_manifest(train_frame, params, model, metrics)
    path = write_artifact(models_dir, manifest, model.weights, model.item_index, model.counts)
    log.info("published model %s (%d items) to %s", manifest.version, len(model.item_index), path)
    return path, model.report, metrics


def _protocol_eval_set(
    frame: pd.DataFrame, item_index: ItemIndex, allowed: set[str] | None, protocol: EvalProtocol
) -> EvalSet:
    """The test sessions ``protocol`` ranks: for next-click as ``restrict_to_catalogue``; for last-item the
    sessions whose last event is in the catalogue (and ``allowed``), without their other unknown events.
    """
    if protocol.targets == "next-click":
        return restrict_to_catalogue(frame, item_index, allowed)
    mask = None if allowed is None else pd.Series(item_index.ids, dtype=object).isin(allowed).to_numpy()
    sessions = last_item_sessions(to_sessions(frame, item_index), mask)
    return EvalSet(
        sessions,
        dropped_events=int(len(frame) - sessions.n_events),
        dropped_sessions=int(frame["session_id"].nunique() - sessions.n_sessions),
    )


def evaluate_artifact(
    artifact: ModelArtifact,
    test_frame: pd.DataFrame,
    train_frame: pd.DataFrame | None = None,
    protocol: EvalProtocol = NEXT_CLICK,
) -> tuple[dict[str, float], EvalSet]:
    """Metrics of a model version on ``test_frame`` under ``protocol`` (default: every next click, full ranking).

    Test events of items outside the model's catalogue (and, with ``train_frame``, of items absent from that
    training data, so baselines and model see the same events) are dropped and counted; under last-item, a
    session whose last item is unknown is dropped whole.
    """
    allowed = None if train_frame is None else set(train_frame["item_id"].tolist())
    test = _protocol_eval_set(test_frame, artifact.item_index, allowed, protocol)
    return evaluate(ModelScorer(artifact.model()), test.sessions, protocol=protocol), test


def evaluate_baselines(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame, protocol: EvalProtocol = NEXT_CLICK
) -> tuple[dict[str, dict[str, float]], EvalSet]:
    """Metrics (and fit + evaluation seconds) of every baseline trained on ``train_frame``, under ``protocol``."""
    item_index = ItemIndex.from_events(train_frame["item_id"])
    train = to_sessions(train_frame, item_index)
    test = _protocol_eval_set(test_frame, item_index, None, protocol)
    results: dict[str, dict[str, float]] = {}
    for make in (PopularityScorer, SequentialRulesScorer, VSKNNScorer):
        started = time.perf_counter()
        scorer = make(train, len(item_index))
        fitted = time.perf_counter()
        metrics = evaluate(scorer, test.sessions, protocol=protocol)
        metrics["fit_seconds"] = fitted - started
        metrics["eval_seconds"] = time.perf_counter() - fitted
        results[scorer.name] = metrics
    return results, test

