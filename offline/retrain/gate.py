"""The retrain gate: candidate and current scored on the same held-out events, the decision and its record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from modelkit.artifact import ModelArtifact
from modelkit.family import SessionModel
from modelkit.item_index import ItemIndex
from offline.cleaning import drop_short_sessions, restrict_to_items
from offline.evaluate import ModelScorer, evaluate
from offline.pipeline import to_sessions
from offline.retrain.prepare import PreparedWindow
from schemas.manifest import GateValue

log = logging.getLogger(__name__)

GATE_METRICS = ("mrr@20", "recall@20")
"""The gate compares these; a candidate may be worse by at most ``margin`` (absolute) on each."""


@dataclass(frozen=True)
class GateMetrics:
    """Both metric sets of the gate, on the same events, and the candidate's on the whole gate set."""

    candidate: dict[str, float]
    current: dict[str, float] | None
    candidate_full: dict[str, float]
    compared_events: int  # gate events both models know (all gate events without a current model)


def gate_metrics(
    gate: pd.DataFrame, candidate_model: SessionModel, index: ItemIndex, current: ModelArtifact | None
) -> GateMetrics:
    """Candidate and ``current`` on the same gate events: those whose items ``current`` knows too.

    ``gate`` holds only items of the candidate's training data. ``current`` cannot score items it has never
    seen, so both are compared on the gate events of known items (sessions left with fewer than 2 events
    dropped); the candidate is also scored on the whole gate set, new items included (``candidate_full``).
    """
    full = evaluate(ModelScorer(candidate_model), to_sessions(gate, index))
    if current is None:
        return GateMetrics(full, None, full, len(gate))
    common, _ = restrict_to_items(gate, pd.Index(current.item_index.ids.tolist(), dtype="str"))
    common, _ = drop_short_sessions(common, 2)
    candidate = evaluate(ModelScorer(candidate_model), to_sessions(common, index))
    known = evaluate(ModelScorer(current.model()), to_sessions(common, current.item_index))
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


def log_decision(accepted: bool, reason: str, scores: GateMetrics, current_name: str | None) -> None:
    """Log the decision, then the candidate's and current's metrics side by side."""

    def show(metrics: Mapping[str, float] | None) -> str:
        if metrics is None:
            return "-"
        return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k != "n_predictions") + (
            f" (n={int(metrics.get('n_predictions', 0))})")

    log.info("gate %s: %s", "ACCEPTED" if accepted else "REJECTED", reason)
    log.info("gate candidate (%d compared events): %s", scores.compared_events, show(scores.candidate))
    log.info("gate current %s (same events): %s", current_name or "(none)", show(scores.current))
    log.info("gate candidate on every gate event: %s", show(scores.candidate_full))
