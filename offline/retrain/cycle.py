"""One retrain cycle: read the window, train a candidate, gate it against current, publish it, apply retention."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelkit.artifact import MANIFEST_FILE, ModelArtifact, load_artifact, write_artifact
from modelkit.item_index import ItemIndex
from modelkit.registry import (
    REJECTED_DIR,
    Publisher,
    append_history,
    apply_retention,
    current_version,
    models_lock,
    notify,
)
from offline.cleaning import SECONDS_PER_DAY
from offline.pipeline import TrainingParams, build_manifest, train_model
from offline.retrain.gate import gate_decision, gate_metrics, gate_record, log_decision
from offline.retrain.prepare import prepare_window
from offline.retrain.source import ReadSummary, Source, read_window
from offline.warm_start import catalogue_change, warm_start_from, warm_start_index
from schemas import ModelManifest

log = logging.getLogger(__name__)


@dataclass
class RetrainReport:
    """Outcome of one retrain cycle."""

    version: str
    family: str  # the candidate's model family
    decision: str  # "accepted" or "rejected"
    reason: str
    path: Path
    current_version: str | None  # after the cycle
    previous_version: str | None  # current before the cycle (the one the gate compared against)
    parent_version: str | None  # warm-start source
    window_start: float
    window_end: float
    gate_start: float
    window_events: int
    train_events: int
    train_sessions: int
    gate_events: int
    n_items: int
    items_added: int
    items_dropped: int
    candidate_metrics: dict[str, float]  # on the compared gate events (all gate events when there is no current)
    current_metrics: dict[str, float] | None  # on the same events
    candidate_full_metrics: dict[str, float]  # candidate on every gate event (new items included)
    timings: dict[str, float] = field(default_factory=dict)
    deleted_versions: list[str] = field(default_factory=list)
    message_sent: bool = False
    publish_error: str | None = None
    read: ReadSummary | None = None

    @property
    def accepted(self) -> bool:
        return self.decision == "accepted"

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if k != "read"}
        values["path"] = str(self.path)
        values["read"] = self.read.to_dict() if self.read is not None else None
        return values


def retrain_cycle(
    source: Source,
    models_dir: Path,
    params: TrainingParams,
    *,
    window_days: float,
    gate_days: float = 1.0,
    margin: float = 0.02,
    warm_start: bool = True,
    keep_versions: int = 5,
    publish: Publisher | None = None,
    now: float | None = None,
    keep_missing_items: bool = False,
    min_session_length: int = 2,
    min_item_support: int = 5,
    progress: bool = True,
) -> RetrainReport:
    """One cycle: read window -> clean + split off the gate days -> train candidate -> gate -> publish -> retention.

    The window is the last ``window_days`` before ``now`` (default: the newest event in the source); its
    newest ``gate_days`` (sessions ending then) are the gate set, never trained on. The candidate, of the
    family of ``params``, is warm-started from ``current`` when there is one (and ``warm_start``) of the same
    family (and, for SASRec, the same sizes), else trained from scratch. It
    becomes current only if there is no current model or its MRR@20 and Recall@20 on the gate set are at
    least current's minus ``margin``; then ``publish(manifest)`` is called (e.g. the command line hands in
    ``stream_worker.model_updates.kafka_publisher``). A refused candidate is written to ``models_dir/rejected/``.
    Afterwards only the newest ``keep_versions`` versions are kept, plus current and the version it replaced.
    """
    _check_cycle_args(window_days, gate_days, margin, keep_versions)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with models_lock(models_dir):
        started = time.perf_counter()
        frame, window_end, read_report = read_window(source, window_days * SECONDS_PER_DAY, now)
        timings["read"] = time.perf_counter() - started

        mark = time.perf_counter()
        window_start = window_end - window_days * SECONDS_PER_DAY
        gate_start = window_end - gate_days * SECONDS_PER_DAY
        prepared = prepare_window(frame, window_start, window_end, gate_start,
                                  min_session_length=min_session_length, min_item_support=min_item_support)
        previous_name = current_version(models_dir)
        current = load_artifact(models_dir / previous_name) if previous_name is not None else None
        timings["prepare"] = time.perf_counter() - mark

        mark = time.perf_counter()
        parent = current if (warm_start and current is not None) else None
        index, initial, parent = _candidate_start(prepared.train, params, parent, keep_missing_items)
        model = train_model(prepared.train, params, index, initial, progress=progress)
        timings["train"] = time.perf_counter() - mark

        mark = time.perf_counter()
        scores = gate_metrics(prepared.gate, model.model(), index, current)
        candidate_metrics, current_metrics = scores.candidate, scores.current
        accepted, reason = gate_decision(candidate_metrics, current_metrics, margin)
        timings["gate"] = time.perf_counter() - mark
        log_decision(accepted, reason, scores, previous_name)

        mark = time.perf_counter()
        change = catalogue_change(parent.item_index, index) if parent is not None else None
        manifest = build_manifest(
            prepared.train, params, model, {f"gate_{k}": v for k, v in scores.candidate_full.items()},
            parent_version=parent.version if parent is not None else None,
            gate=gate_record(accepted, reason, margin, prepared, scores, previous_name, warm_start=parent is not None),
        )
        target_dir = models_dir if accepted else models_dir / REJECTED_DIR
        path = write_artifact(target_dir, manifest, model.weights, index, model.counts, make_current=accepted)
        message_sent, publish_error = False, None
        if accepted:
            append_history(models_dir, manifest.version, previous_name, "retrain")
            written = ModelManifest.model_validate_json((path / MANIFEST_FILE).read_bytes())
            message_sent, publish_error = notify(publish, written)
            log.info("model %s is now current (was %s), %d items", manifest.version, previous_name, len(index))
        else:
            log.warning("candidate %s refused, kept in %s; current stays %s", manifest.version, path, previous_name)
        timings["publish"] = time.perf_counter() - mark

        mark = time.perf_counter()
        deleted = apply_retention(models_dir, keep_versions)
        timings["retention"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started

    return RetrainReport(
        version=manifest.version,
        family=manifest.model_family,
        decision="accepted" if accepted else "rejected",
        reason=reason,
        path=path,
        current_version=current_version(models_dir),
        previous_version=previous_name,
        parent_version=manifest.parent_version,
        window_start=prepared.window_start,
        window_end=prepared.window_end,
        gate_start=prepared.gate_start,
        window_events=prepared.window_events,
        train_events=len(prepared.train),
        train_sessions=int(prepared.train["session_id"].nunique()),
        gate_events=len(prepared.gate),
        n_items=len(index),
        items_added=change.added if change is not None else len(index),
        items_dropped=change.dropped if change is not None else 0,
        candidate_metrics=candidate_metrics,
        current_metrics=current_metrics,
        candidate_full_metrics=scores.candidate_full,
        timings=timings,
        deleted_versions=deleted,
        message_sent=message_sent,
        publish_error=publish_error,
        read=read_report,
    )


def _check_cycle_args(window_days: float, gate_days: float, margin: float, keep_versions: int) -> None:
    if not (math.isfinite(gate_days) and gate_days > 0):
        raise ValueError(f"gate_days must be a positive number, got {gate_days!r}")
    if not (math.isfinite(window_days) and window_days > gate_days):
        raise ValueError(f"window_days ({window_days!r}) must be larger than gate_days ({gate_days!r})")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be zero or positive, got {margin!r}")
    if keep_versions < 1:
        raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")


def _candidate_start(
    train: pd.DataFrame, params: TrainingParams, parent: ModelArtifact | None, keep_missing_items: bool
) -> tuple[ItemIndex, dict[str, np.ndarray] | None, ModelArtifact | None]:
    """The candidate's catalogue, initial weights and warm-start source: warm-started from ``parent``, or new
    (from scratch; also when ``parent`` cannot be warm-started from, see ``warm_start_from``)."""
    if parent is not None:
        index = warm_start_index(parent.item_index, train["item_id"], keep_missing_items)
        initial = warm_start_from(parent, index, params, params.seed)
        if initial is not None:
            change = catalogue_change(parent.item_index, index)
            fate = "absent from the window but kept" if keep_missing_items else "dropped (not in the window)"
            log.info("warm start from %s: %d items kept, %d new, %d %s", parent.version, change.kept, change.added,
                     change.dropped, fate)
            return index, initial, parent
    index = ItemIndex.from_events(train["item_id"])
    log.info("training from scratch on %d items", len(index))
    return index, None, None
