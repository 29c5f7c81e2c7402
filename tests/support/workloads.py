"""Click workloads: synthetic sessions, the real YOOCHOOSE clicks as Kafka messages, and their fault-free run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas import ClickEvent
from stream_worker.processor import Click, process_batch
from stream_worker.replay import click_messages, time_ordered
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState

RSC15_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rsc15-100k"
Message = tuple[bytes | None, bytes | None]


def synthetic_sessions(
    n_sessions: int, n_items: int, seed: int = 0, max_length: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions following a noisy item chain (item i -> i+1), so a sequence model can learn something."""
    rng = np.random.default_rng(seed)
    session_ids, item_ids, timestamps = [], [], []
    t = 1_600_000_000.0
    for s in range(n_sessions):
        item = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, max_length + 1))):
            session_ids.append(f"s{s}")
            item_ids.append(str(item))
            timestamps.append(t)
            t += 1.0
            item = (item + 1) % n_items if rng.random() < 0.9 else int(rng.integers(n_items))
    return np.array(session_ids), np.array(item_ids), np.array(timestamps)


def workload(n_events: int, data_dir: Path = RSC15_DIR) -> list[Message]:
    """Real YOOCHOOSE clicks (train_full) in time order, repeated with fresh session ids up to ``n_events``."""
    from offline.loaders import load_events

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_full.txt", "session-tsv")
    messages: list[Message] = []
    copy = 0
    while len(messages) < n_events:
        shifted = frame.assign(session_id=frame["session_id"] + (f"-r{copy}" if copy else ""))
        messages += [(k, v) for k, v, _ in click_messages(time_ordered(shifted))]
        copy += 1
    return messages[:n_events]


@dataclass
class Reference:
    """What an uninterrupted run produces: one prediction per event id and the final state per session."""

    predictions: dict[str, dict[str, Any]]
    states: dict[str, SessionState]


def clicks_of(messages: Sequence[Message]) -> dict[str, list[Click]]:
    """Valid clicks grouped by session in stream order (offset = position in ``messages``)."""
    clicks: dict[str, list[Click]] = {}
    for offset, (_, value) in enumerate(messages):
        if value is None:
            continue
        event = ClickEvent.model_validate_json(value)
        clicks.setdefault(event.session_id, []).append(Click(event, 0, offset))
    return clicks


def reference_run(model: ServingModel, messages: Sequence[Message], k: int = 20, ring_size: int = 50) -> Reference:
    """process_batch over the whole stream at once: the fault-free predictions and final states."""
    outcome = process_batch(model, clicks_of(messages), {}, k=k, ring_size=ring_size, received_at=0.0)
    predictions = {}
    for _, payload in outcome.predictions:
        prediction = json.loads(payload)
        predictions[prediction["event_id"]] = prediction
    return Reference(predictions, outcome.states)
