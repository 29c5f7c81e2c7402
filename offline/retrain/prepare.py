"""Preparing a retrain window: clean it, then split off the gate set (whole sessions, disjoint in time)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from modelkit.registry import RetrainError
from offline.cleaning import clean, drop_short_sessions, restrict_to_items


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
        raise ValueError(f"no training sessions end before the gate period (from {iso_utc(gate_start)}); "
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


def iso_utc(stamp: float) -> str:
    """``2023-11-14T22:13:20Z`` (a non-finite stamp as is)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if math.isfinite(stamp) else str(stamp)
