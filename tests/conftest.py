"""Shared test fixtures: small synthetic sessions and the path of the real YOOCHOOSE sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RSC15_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsc15-100k"


@pytest.fixture(scope="session")
def rsc15_dir() -> Path:
    if not (RSC15_DIR / "yoochoose-clicks-100k_train_tr.txt").is_file():
        pytest.skip(f"real YOOCHOOSE sample not found at {RSC15_DIR}")
    return RSC15_DIR


def synthetic_sessions(n_sessions: int, n_items: int, seed: int = 0, max_length: int = 8):
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


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """An embedded tansu broker on a free port for the whole test session, stopped by its own PID at the end.

    Memory storage: use a fresh topic name per test (e.g. with uuid) so tests do not see each other's data.
    """
    from stream_worker.broker import EmbeddedBroker

    embedded = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()
