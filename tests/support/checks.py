"""Comparisons with a fault-free run: one prediction (same ranking), every prediction, the final session states."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stream_worker.session_state import SessionState
from tests.support.workloads import Reference


def same_ranking(got: dict[str, Any], want: dict[str, Any], tol: float = 1e-4) -> bool:
    """Same prediction up to float noise: same version and path, scores agree, and items may only swap where
    their scores are within ``tol`` (matrix products over different batch compositions differ in the last bits)."""
    if got["model_version"] != want["model_version"] or got["path"] != want["path"]:
        return False
    if got["items"] == want["items"]:
        return bool(np.allclose(got["scores"], want["scores"], atol=tol))
    if not np.allclose(got["scores"], want["scores"], atol=tol):
        return False
    wanted = dict(zip(want["items"], want["scores"], strict=True))
    cutoff = want["scores"][-1]
    return all(abs(wanted[i] - s) <= tol if i in wanted else abs(s - cutoff) <= tol
               for i, s in zip(got["items"], got["scores"], strict=True))


def compare_states(table: dict[bytes, bytes | None], reference: Reference, atol: float = 1e-5) -> dict[str, Any]:
    """Final table vs the fault-free states: model state allclose(atol), ring, counts and version exactly."""
    missing, wrong, extra = [], [], []
    max_diff = 0.0
    for session_id, want in reference.states.items():
        raw = table.get(session_id.encode("utf-8", "surrogatepass"))
        if raw is None:
            missing.append(session_id)
            continue
        got = SessionState.decode(raw)
        diff = (float(np.abs(got.model_state - want.model_state).max())
                if got.model_state.shape == want.model_state.shape else np.inf)
        max_diff = max(max_diff, diff)
        if (diff > atol or got.ring != want.ring or got.event_count != want.event_count
                or got.known_count != want.known_count or got.model_version != want.model_version
                or got.last_timestamp != want.last_timestamp):
            wrong.append(session_id)
    keys = {s.encode("utf-8", "surrogatepass") for s in reference.states}
    extra = [k.decode(errors="replace") for k, v in table.items() if v is not None and k not in keys]
    return {"sessions": len(reference.states), "missing": len(missing), "wrong": len(wrong), "extra": len(extra),
            "max_hidden_diff": max_diff, "examples": (missing + wrong + extra)[:5]}


def compare_predictions(records: Iterable[Any], reference: Reference) -> dict[str, Any]:
    """Every event predicted? Duplicates? Every copy equal to the fault-free prediction (up to float noise)?"""
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        prediction = json.loads(record.value)
        prediction["_created_ms"] = record.timestamp
        by_event.setdefault(prediction["event_id"], []).append(prediction)
    wrong = [e for e, copies in by_event.items()
             if e not in reference.predictions or not all(same_ranking(c, reference.predictions[e]) for c in copies)]
    total = sum(len(c) for c in by_event.values())
    return {
        "events": len(reference.predictions),
        "predictions": total,
        "without_prediction": len(set(reference.predictions) - set(by_event)),
        "duplicate_predictions": total - len(by_event),
        "events_with_duplicates": sum(len(c) > 1 for c in by_event.values()),
        "differing_from_fault_free": len(wrong),
        "examples": wrong[:5],
        "by_event": by_event,
    }


def duplicates_by_incarnation(by_event: dict[str, list[dict[str, Any]]], kills: Sequence[float]) -> dict[str, Any]:
    """Attribute each duplicated event to worker incarnations (split at the kill times, wall clock ms): a
    duplicate explained by at-least-once redelivery has its copies produced by different incarnations."""
    bounds = [k * 1000.0 for k in kills]

    def incarnation(created_ms: float) -> int:
        return sum(created_ms > b for b in bounds)

    same_incarnation = 0
    per_kill = [0] * (len(bounds) + 1)
    for copies in by_event.values():
        if len(copies) < 2:
            continue
        runs = [incarnation(c["_created_ms"]) for c in copies]
        if len(set(runs)) < len(runs):
            same_incarnation += 1
        for run in sorted(set(runs))[1:]:
            per_kill[run - 1] += 1
    return {"same_incarnation": same_incarnation, "after_kill": per_kill[: len(bounds)]}
