"""Windowed retraining: read the last days of clicks, train a candidate, gate it against current, publish it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from modelkit.artifact import (
    MANIFEST_FILE,
    ModelArtifact,
    current_version,
    list_versions,
    load_artifact,
    new_version_name,
    set_current,
    write_artifact,
)
from modelkit.gru4rec import GRU4RecNumpy
from modelkit.item_index import ItemIndex
from offline.cleaning import SECONDS_PER_DAY, clean, drop_short_sessions, restrict_to_items
from offline.evaluate import evaluate
from offline.hyperparams import GRU4RecParams
from offline.pipeline import data_digest, to_sessions
from offline.warm_start import catalogue_change, warm_start_index, warm_start_weights
from schemas import ModelManifest
from schemas.manifest import GateValue, TrainingWindow

if TYPE_CHECKING:
    from offline.topic_reader import ReadReport
    from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
"""Refused candidates are written to MODELS_DIR/rejected/<version>/ (never listed, never current)."""
HISTORY_FILE = ".current-history.jsonl"
"""One JSON line per move of the current pointer made by retrain or rollback: {time, version, previous, action}."""
LOCK_FILE = ".retrain.lock"
GATE_METRICS = ("mrr@20", "recall@20")
"""The gate compares these; a candidate may be worse by at most ``margin`` (absolute) on each."""

Publisher = Callable[[ModelManifest], None]


class RetrainError(RuntimeError):
    """A retrain cycle or rollback cannot run (lock held, data leak, nothing to train on); one-line message."""


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class TopicSource:
    """Click events from a Kafka topic (ClickEvent JSON values), e.g. the worker's input topic."""

    config: str | Mapping[str, Any] | WorkerSettings  # bootstrap string, kafka-python config or settings
    topic: str
    progress: bool = True

    def describe(self) -> str:
        return f"topic {self.topic}"


@dataclass(frozen=True)
class FileSource:
    """Click events from files in one of offline.loaders.FORMATS."""

    paths: tuple[Path, ...]
    format: str
    session_gap_s: float = 3600.0
    min_rating: float | None = None

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)


Source = TopicSource | FileSource

# ------------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class PreparedWindow:
    """The window split for one cycle: training events and the gate set, disjoint in sessions and time."""

    train: pd.DataFrame  # cleaned sessions that end before gate_start
    gate: pd.DataFrame  # sessions ending at/after gate_start, restricted to training items, >= 2 events
    window_start: float
    window_end: float  # inclusive: the newest event (or ``now``)
    gate_start: float
    window_events: int  # before cleaning
    cleaned_events: int
    gate_dropped_events: int  # gate events of items absent from the training data, or left in 1-event sessions


@dataclass
class RetrainReport:
    """Outcome of one retrain cycle."""

    version: str
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
    read: ReadReport | None = None

    @property
    def accepted(self) -> bool:
        return self.decision == "accepted"

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if k != "read"}
        values["path"] = str(self.path)
        values["read"] = self.read.to_dict() if self.read is not None else None
        return values


# ------------------------------------------------------------------------------------------------ the cycle


def retrain_cycle(
    source: Source,
    models_dir: Path,
    params: GRU4RecParams,
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
    newest ``gate_days`` (sessions ending then) are the gate set, never trained on. The candidate is
    warm-started from ``current`` when there is one (and ``warm_start``), else trained from scratch. It
    becomes current only if there is no current model or its MRR@20 and Recall@20 on the gate set are at
    least current's minus ``margin``; then ``publish(manifest)`` is called (e.g. ``kafka_publisher``). A
    refused candidate is written to ``models_dir/rejected/``. Afterwards only the newest ``keep_versions``
    versions are kept, plus current and the version it replaced.
    """
    _check_cycle_args(window_days, gate_days, margin, keep_versions)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _cycle_lock(models_dir):
        started = time.perf_counter()
        frame, window_end, read_report = _read_window(source, window_days * SECONDS_PER_DAY, now)
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
        weights, index, counts, train_report = _train_candidate(
            prepared.train, params, parent, keep_missing_items, progress
        )
        timings["train"] = time.perf_counter() - mark

        mark = time.perf_counter()
        scores = gate_metrics(prepared.gate, weights, index, current)
        candidate_metrics, current_metrics = scores.candidate, scores.current
        accepted, reason = gate_decision(candidate_metrics, current_metrics, margin)
        timings["gate"] = time.perf_counter() - mark
        _log_decision(accepted, reason, scores, previous_name)

        mark = time.perf_counter()
        change = catalogue_change(parent.item_index, index) if parent is not None else None
        manifest = ModelManifest(
            version=new_version_name(),
            created_at=time.time(),
            training_window=TrainingWindow(start=float(prepared.train["timestamp"].min()),
                                           end=float(prepared.train["timestamp"].max())),
            data_digest=data_digest(prepared.train),
            hyperparameters=params.flat(),
            n_items=len(index),
            hidden_size=params.hidden_size,
            n_layers=len(params.layers),
            metrics={
                "train_seconds": train_report.seconds,
                "train_events_per_s": train_report.events_per_s,
                **{f"gate_{k}": v for k, v in scores.candidate_full.items()},
            },
            parent_version=parent.version if parent is not None else None,
            gate=gate_record(accepted, reason, margin, prepared, scores, previous_name, warm_start=parent is not None),
        )
        target_dir = models_dir if accepted else models_dir / REJECTED_DIR
        path = write_artifact(target_dir, manifest, weights, index, counts, make_current=accepted)
        message_sent, publish_error = False, None
        if accepted:
            _append_history(models_dir, manifest.version, previous_name, "retrain")
            written = ModelManifest.model_validate_json((path / MANIFEST_FILE).read_bytes())
            message_sent, publish_error = _notify(publish, written)
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


def _read_window(source: Source, window_s: float, now: float | None) -> tuple[pd.DataFrame, float, ReadReport | None]:
    """Events of the window [end - window_s, end] and ``end`` (``now`` or the newest event)."""
    if isinstance(source, TopicSource):
        from offline.topic_reader import TopicReadError, newest_event_timestamp, read_click_window

        if now is not None:
            end_ts = math.nextafter(now, math.inf)  # the window includes ``now``
            frame, report = read_click_window(source.config, source.topic, now - window_s, end_ts,
                                              progress=source.progress)
        else:
            newest = newest_event_timestamp(source.config, source.topic)
            if newest is None:
                raise TopicReadError(f"topic {source.topic!r} has no valid click events")
            frame, report = read_click_window(source.config, source.topic, newest - window_s, math.inf,
                                              progress=source.progress)
    elif isinstance(source, FileSource):
        from offline.loaders import load_events

        if not source.paths:
            raise ValueError("no input files given")
        frames = [load_events(path, source.format, session_gap_s=source.session_gap_s, min_rating=source.min_rating)
                  for path in source.paths]
        frame = pd.concat([f[["session_id", "item_id", "timestamp"]] for f in frames], ignore_index=True)
        report = None
    else:
        raise TypeError(f"unknown source {source!r}")
    if len(frame) == 0:
        raise ValueError(f"no click events in {source.describe()}"
                         + (f" in the {window_s / SECONDS_PER_DAY:g} days before {now}" if now is not None else ""))
    end = float(now) if now is not None else float(frame["timestamp"].max())
    stamps = frame["timestamp"].to_numpy(np.float64)
    inside = (stamps >= end - window_s) & (stamps <= end)
    if not inside.any():
        raise ValueError(f"no click events in {source.describe()} in the {window_s / SECONDS_PER_DAY:g} days "
                         f"before {end}")
    log.info("window [%s, %s]: %d of %d events read from %s", _iso(end - window_s), _iso(end), int(inside.sum()),
             len(frame), source.describe())
    return frame[inside].reset_index(drop=True), end, report


def prepare_window(
    frame: pd.DataFrame,
    window_start: float,
    window_end: float,
    gate_start: float,
    *,
    min_session_length: int = 2,
    min_item_support: int = 5,
) -> PreparedWindow:
    """Clean the window, then split whole sessions: those ending at/after ``gate_start`` form the gate set.

    Gate events are restricted to items of the training part (the candidate cannot score others), then
    gate sessions left with fewer than 2 events are dropped. Raises RetrainError if a training event is at or
    after ``gate_start`` or a session is on both sides (cannot happen by construction: checked anyway).
    """
    if not window_start <= gate_start <= window_end:
        raise ValueError(f"gate start {gate_start} outside the window [{window_start}, {window_end}]")
    cleaned = clean(frame, min_session_length, min_item_support)
    if len(cleaned) == 0:
        raise ValueError(f"no events left in the window after cleaning (sessions of >= {min_session_length} "
                         f"events, items with >= {min_item_support} clicks)")
    stamps = cleaned["timestamp"].to_numpy(np.float64)
    codes, uniques = pd.factorize(cleaned["session_id"])
    session_end = np.full(len(uniques), -np.inf)
    np.maximum.at(session_end, codes, stamps)
    in_gate = session_end[codes] >= gate_start
    train = cleaned[~in_gate].reset_index(drop=True)
    gate_all = cleaned[in_gate].reset_index(drop=True)
    if len(train) == 0:
        raise ValueError(f"no training sessions end before the gate period (from {_iso(gate_start)}); "
                         "widen the window or shorten the gate")
    if float(train["timestamp"].max()) >= gate_start:
        raise RetrainError("data leak: a training event lies in the gate period")
    if not set(train["session_id"].unique()).isdisjoint(gate_all["session_id"].unique()):
        raise RetrainError("data leak: a session is both in the training data and the gate set")
    gate, dropped_items = restrict_to_items(gate_all, pd.Index(train["item_id"].unique()))
    gate, _ = drop_short_sessions(gate, 2)
    return PreparedWindow(
        train=train,
        gate=gate,
        window_start=float(window_start),
        window_end=float(window_end),
        gate_start=float(gate_start),
        window_events=len(frame),
        cleaned_events=len(cleaned),
        gate_dropped_events=len(gate_all) - len(gate),
    )


def _train_candidate(
    train: pd.DataFrame, params: GRU4RecParams, parent: ModelArtifact | None, keep_missing_items: bool, progress: bool
) -> tuple[dict[str, np.ndarray], ItemIndex, np.ndarray, Any]:
    from offline.train import GRU4RecTrainer, item_counts  # TensorFlow is only needed here

    if parent is not None:
        index = warm_start_index(parent.item_index, train["item_id"], keep_missing_items)
        initial: dict[str, np.ndarray] | None = warm_start_weights(parent, index, params, params.seed)
        change = catalogue_change(parent.item_index, index)
        fate = "absent from the window but kept" if keep_missing_items else "dropped (not in the window)"
        log.info("warm start from %s: %d items kept, %d new, %d %s", parent.version, change.kept, change.added,
                 change.dropped, fate)
    else:
        index = ItemIndex.from_events(train["item_id"])
        initial = None
        log.info("training from scratch on %d items", len(index))
    sessions = to_sessions(train, index)
    counts = item_counts(sessions, len(index))
    trainer = GRU4RecTrainer(params, counts, initial=initial)
    report = trainer.fit(sessions, progress=progress)
    return trainer.weights(), index, counts, report


# ------------------------------------------------------------------------------------------------ the gate


@dataclass(frozen=True)
class GateMetrics:
    """Both metric sets of the gate, on the same events, and the candidate's on the whole gate set."""

    candidate: dict[str, float]
    current: dict[str, float] | None
    candidate_full: dict[str, float]
    compared_events: int  # gate events both models know (all gate events without a current model)


def gate_metrics(
    gate: pd.DataFrame, weights: dict[str, np.ndarray], index: ItemIndex, current: ModelArtifact | None
) -> GateMetrics:
    """Candidate and ``current`` on the same gate events: those whose items ``current`` knows too.

    ``gate`` holds only items of the candidate's training data. ``current`` cannot score items it has never
    seen, so both are compared on the gate events of known items (sessions left with fewer than 2 events
    dropped); the candidate is also scored on the whole gate set, new items included (``candidate_full``).
    """
    full = evaluate(GRU4RecNumpy(weights), to_sessions(gate, index))
    if current is None:
        return GateMetrics(full, None, full, len(gate))
    common, _ = restrict_to_items(gate, pd.Index(current.item_index.ids.tolist(), dtype="str"))
    common, _ = drop_short_sessions(common, 2)
    candidate = evaluate(GRU4RecNumpy(weights), to_sessions(common, index))
    known = evaluate(GRU4RecNumpy(current.weights), to_sessions(common, current.item_index))
    return GateMetrics(candidate, known, full, len(common))


def gate_decision(
    candidate: Mapping[str, float], current: Mapping[str, float] | None, margin: float
) -> tuple[bool, str]:
    """Accept when there is no current model, or on every GATE_METRICS candidate >= current - margin."""
    if current is None:
        return True, "no current model"
    if candidate.get("n_predictions", 0) == 0:
        return False, "the gate set has no events the candidate can be scored on"
    if current.get("n_predictions", 0) == 0:
        return True, "the current model knows none of the gate set's items"
    parts, ok = [], True
    for name in GATE_METRICS:
        passed = candidate[name] >= current[name] - margin
        ok &= passed
        parts.append(f"{name} {candidate[name]:.4f} vs {current[name]:.4f} ({'ok' if passed else 'worse'})")
    return ok, f"{'; '.join(parts)}, margin {margin:g}"


def gate_record(
    accepted: bool,
    reason: str,
    margin: float,
    prepared: PreparedWindow,
    scores: GateMetrics,
    current_name: str | None,
    *,
    warm_start: bool,
) -> dict[str, GateValue]:
    """The manifest's ``gate`` entry: decision, margin, windows and both metric sets (flat, JSON scalars)."""
    record: dict[str, GateValue] = {
        "decision": "accepted" if accepted else "rejected",
        "reason": reason,
        "margin": float(margin),
        "metrics": ",".join(GATE_METRICS),
        "compared_with": current_name,
        "warm_start": warm_start,
        "window_start": prepared.window_start,
        "window_end": prepared.window_end,
        "gate_start": prepared.gate_start,
        "gate_end": prepared.window_end,
        "gate_events": len(prepared.gate),
        "gate_dropped_events": prepared.gate_dropped_events,
        "compared_events": scores.compared_events,
    }
    for name, value in scores.candidate.items():
        record[f"candidate_{name}"] = float(value)
    for name in scores.candidate:
        current = scores.current
        record[f"current_{name}"] = float(current[name]) if current is not None and name in current else None
    for name in ("n_predictions", *GATE_METRICS):
        record[f"candidate_full_{name}"] = float(scores.candidate_full[name])
    return record


def _log_decision(accepted: bool, reason: str, scores: GateMetrics, current_name: str | None) -> None:
    def show(metrics: Mapping[str, float] | None) -> str:
        if metrics is None:
            return "-"
        return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k != "n_predictions") + (
            f" (n={int(metrics.get('n_predictions', 0))})")

    log.info("gate %s: %s", "ACCEPTED" if accepted else "REJECTED", reason)
    log.info("gate candidate (%d compared events): %s", scores.compared_events, show(scores.candidate))
    log.info("gate current %s (same events): %s", current_name or "(none)", show(scores.current))
    log.info("gate candidate on every gate event: %s", show(scores.candidate_full))


# ------------------------------------------------------------------------------------------------ publishing


def kafka_publisher(config: str | Mapping[str, Any] | WorkerSettings, topic: str = "model-updates") -> Publisher:
    """A publisher sending each manifest to ``topic`` (key = version, value = manifest JSON) with kafka-python.

    The topic is created with 1 partition if it does not exist (the worker reads it as one ordered stream).
    """
    def publish(manifest: ModelManifest) -> None:
        from stream_worker.broker import create_topics
        from stream_worker.replay import produce_raw
        from stream_worker.settings import client_config

        target = client_config(config)
        create_topics(target, {topic: 1})
        produce_raw(target, topic, [(manifest.version.encode(), manifest.model_dump_json().encode())])
        log.info("published model update %s to %s", manifest.version, topic)

    return publish


def _notify(publish: Publisher | None, manifest: ModelManifest) -> tuple[bool, str | None]:
    """Send the model-update message; a failure is logged, not raised (current has moved; workers poll it)."""
    if publish is None:
        return False, None
    try:
        publish(manifest)
    except Exception as error:  # noqa: BLE001 - the pointer already moved; the worker's poller picks it up
        text = " ".join(str(error).split()) or type(error).__name__
        log.error("model %s is current but the model-update message failed: %s", manifest.version, text)
        return False, text
    return True, None


def rollback(models_dir: Path, version: str, publish: Publisher | None = None) -> tuple[str | None, bool]:
    """Move ``current`` to an existing, loadable ``version``; returns (previous current, message sent).

    Refuses (ValueError) a version that is not a published version directory of ``models_dir`` (rejected
    candidates included) or whose artifact does not load.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"no models directory {models_dir}")
    if version not in list_versions(models_dir):
        raise ValueError(f"no model version {version!r} in {models_dir} (see 'streamrec models list')")
    with _cycle_lock(models_dir):
        artifact = load_artifact(models_dir / version)  # a broken version must never become current
        previous = current_version(models_dir)
        set_current(models_dir, version)
        if previous != version:
            _append_history(models_dir, version, previous, "rollback")
    log.info("current moved from %s to %s (rollback)", previous, version)
    sent, _ = _notify(publish, artifact.manifest)
    return previous, sent


# ------------------------------------------------------------------------------------------------ retention


def versions_by_age(directory: Path) -> list[str]:
    """Published versions in ``directory``, oldest first by manifest ``created_at`` (then name)."""
    def created(name: str) -> float:
        try:
            return float(json.loads((directory / name / MANIFEST_FILE).read_bytes())["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    return sorted(list_versions(directory), key=lambda name: (created(name), name))


def replaced_version(models_dir: Path) -> str | None:
    """The version that was current before the current one (from the pointer history), if known."""
    current = current_version(models_dir)
    for entry in reversed(_read_history(models_dir)):
        if entry.get("version") == current:
            previous = entry.get("previous")
            return previous if isinstance(previous, str) else None
    if current is not None:  # a pointer moved by something else (e.g. `streamrec train`): its gate says
        with contextlib.suppress(OSError, ValueError):
            manifest = ModelManifest.model_validate_json((models_dir / current / MANIFEST_FILE).read_bytes())
            compared = (manifest.gate or {}).get("compared_with")
            return compared if isinstance(compared, str) else manifest.parent_version
    return None


def apply_retention(models_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never current nor the one it replaced; same for rejected/.

    Returns the deleted version names (rejected ones as ``rejected/<version>``). A version directory is
    renamed to a hidden name first, so it disappears atomically from listings.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    protected = {name for name in (current_version(models_dir), replaced_version(models_dir)) if name}
    deleted: list[str] = []
    versions = versions_by_age(models_dir)
    for name in versions[: max(0, len(versions) - keep)]:
        if name not in protected:
            _delete(models_dir, name)
            deleted.append(name)
    rejected_dir = models_dir / REJECTED_DIR
    rejected = versions_by_age(rejected_dir)
    for name in rejected[: max(0, len(rejected) - keep)]:
        _delete(rejected_dir, name)
        deleted.append(f"{REJECTED_DIR}/{name}")
    if deleted:
        log.info("retention (keep %d): deleted %s", keep, ", ".join(deleted))
    return deleted


def _delete(directory: Path, name: str) -> None:
    doomed = directory / f".deleting-{name}-{secrets.token_hex(4)}"
    os.rename(directory / name, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the loop


class CycleLoop:
    """Runs ``cycle`` every ``interval_s`` (start to start) until stopped; a failed cycle is logged, not fatal."""

    def __init__(self, cycle: Callable[[], Any], interval_s: float, max_cycles: int | None = None) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")
        self.cycle = cycle
        self.interval_s = interval_s
        self.max_cycles = max_cycles
        self.stop_event = threading.Event()
        self.in_cycle = False  # read by signal handlers that want to abort a running cycle
        self.cycles = 0
        self.failures = 0
        self.last_failed = False
        self.last_error = ""

    def stop(self) -> None:
        """Stop before the next cycle (safe from another thread or a signal handler)."""
        self.stop_event.set()

    def run(self) -> int:
        """Run until stopped or ``max_cycles`` ran; returns the number of cycles that failed."""
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.in_cycle = True
            try:
                if self.stop_event.is_set():
                    break
                self.cycle()
                self.last_failed = False
            except KeyboardInterrupt:
                log.warning("cycle %d interrupted; nothing half-published", self.cycles + 1)
                self.stop_event.set()
                break
            except Exception as error:  # noqa: BLE001 - a failed cycle must not end the loop
                self.failures += 1
                self.last_failed = True
                self.last_error = " ".join(str(error).split()) or type(error).__name__
                log.error("cycle %d failed: %s: %s", self.cycles + 1, type(error).__name__, self.last_error)
            finally:
                self.in_cycle = False
            self.cycles += 1
            if self.max_cycles is not None and self.cycles >= self.max_cycles:
                break
            wait = max(0.0, started + self.interval_s - time.monotonic())
            log.info("next cycle in %.0f s", wait)
            self.stop_event.wait(wait)
        return self.failures


# ------------------------------------------------------------------------------------------------ internals


@contextlib.contextmanager
def _cycle_lock(models_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock on ``models_dir`` (a cron job overlapping the previous one is refused)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(f"another retrain cycle or rollback holds the lock on {models_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _append_history(models_dir: Path, version: str, previous: str | None, action: str) -> None:
    entry = {"time": time.time(), "version": version, "previous": previous, "action": action}
    with open(models_dir / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_history(models_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (models_dir / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if math.isfinite(stamp) else str(stamp)


def describe_versions(models_dir: Path, include_rejected: bool = False) -> list[dict[str, Any]]:
    """One row per version (oldest first): version, created, n_items, gate decision, metrics, current mark."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"no models directory {models_dir}")
    current = current_version(models_dir)
    places: list[tuple[Path, str]] = [(models_dir, name) for name in versions_by_age(models_dir)]
    if include_rejected:
        places += [(models_dir / REJECTED_DIR, name) for name in versions_by_age(models_dir / REJECTED_DIR)]
    rows = []
    for directory, name in places:
        row: dict[str, Any] = {"version": name, "current": directory == models_dir and name == current,
                               "rejected": directory != models_dir}
        try:
            manifest = ModelManifest.model_validate_json((directory / name / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as error:
            row["error"] = " ".join(str(error).split())[:200]
            rows.append(row)
            continue
        gate = manifest.gate or {}
        row.update(
            created=_iso(manifest.created_at),
            n_items=manifest.n_items,
            parent=manifest.parent_version,
            decision=gate.get("decision", "-"),
            **{name: _metric(manifest, name) for name in GATE_METRICS},
        )
        rows.append(row)
    return rows


def _metric(manifest: ModelManifest, name: str) -> float | None:
    """The candidate's metric on the whole gate set, else the validation metric of a `streamrec train` version."""
    value = manifest.metrics.get(f"gate_{name}", manifest.metrics.get(f"valid_{name}"))
    return None if value is None else float(value)
