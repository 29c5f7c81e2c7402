"""What the benchmark scripts share: the repository root on sys.path (for tests.support), a model to serve and
the serving step's cost."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if TYPE_CHECKING:
    from stream_worker.serving import ServingModel


def given_or_trained(models_dir: Path | None, work: Path) -> Path:
    """``--models-dir`` when given, else a model trained on train_tr under ``work``."""
    from tests.support.artifacts import train_model

    if models_dir is None:
        models_dir = work / "models"
        train_model(models_dir)
    return models_dir


def per_event_us(model: ServingModel, batch: int, k: int, seconds: float, before: np.ndarray | None = None,
                 repeats: int = 1) -> tuple[float, float]:
    """(µs per event for step + score + top-k, µs per event for the model step alone), each the best of
    ``repeats`` measurements of ``seconds`` (a shared machine's other jobs only ever slow a measurement down).

    Without ``before`` the states are carried from click to click from the initial state (a GRU4REC state
    does not grow; a SASRec window fills up after max_len clicks: warm it up first). With ``before``
    (n_batches, batch, state_size), batch ``i`` steps ``before[i % n_batches]``: sessions of a given length.
    """
    rng = np.random.default_rng(0)
    state = np.repeat(model.initial_state()[None, :], batch, axis=0)  # (batch, state_size)
    items = rng.integers(0, len(model.item_ids), size=(256, batch))
    timings = [np.inf, np.inf]
    for _ in range(repeats):
        for slot, full in enumerate((True, False)):
            events, started, i = 0, time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                stepped = model.step(state if before is None else before[i % len(before)], items[i % 256])
                if full:
                    model.recommend(stepped, k)
                if before is None:
                    state = stepped
                events += batch
                i += 1
            timings[slot] = min(timings[slot], (time.perf_counter() - started) / events * 1e6)
    return timings[0], timings[1]
