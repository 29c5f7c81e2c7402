"""Microbenchmark of the serving model step: µs per event for GRU step + full scoring + top-k, by batch size."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _support  # noqa: F401  (the repository root on sys.path, for tests.support)
import numpy as np

from modelkit.artifact import load_artifact
from stream_worker.serving import ServingModel
from tests.support.artifacts import random_artifact


def serving_model(n_items: int, hidden: int, models_dir: Path) -> ServingModel:
    """A random model of the given size, written and loaded as a real artifact."""
    path = random_artifact(models_dir, f"bench-{n_items}", items=[str(i) for i in range(n_items)], layers=(hidden,),
                           popularity=np.ones(n_items, np.int64), window=(0.0, 0.0), make_current=False)
    return ServingModel(load_artifact(path))


def per_event_us(n_items: int, batch: int, hidden: int, k: int, seconds: float) -> tuple[float, float]:
    """(µs per event for step + score + top-k, µs per event for the GRU step alone)."""
    with tempfile.TemporaryDirectory() as models_dir:
        model = serving_model(n_items, hidden, Path(models_dir))
    rng = np.random.default_rng(0)
    state = np.repeat(model.initial_state()[None, :], batch, axis=0)  # (batch, state_size)
    items = rng.integers(0, n_items, size=(256, batch))
    timings = []
    for full in (True, False):
        events, started, i = 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            state = model.step(state, items[i % 256])
            if full:
                model.recommend(state, k)
            events += batch
            i += 1
        timings.append((time.perf_counter() - started) / events * 1e6)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    print(f"{'items':>7}{'batch':>7}{'us/event':>11}{'step only':>11}{'events/s':>11}")
    results = {}
    for n_items in (3_000, 40_000):
        for batch in (1, 64, 512):
            full, step = per_event_us(n_items, batch, args.hidden, args.k, args.seconds)
            results[(n_items, batch)] = full
            print(f"{n_items:>7}{batch:>7}{full:>11.1f}{step:>11.1f}{1e6 / full:>11.0f}")
    # Baseline in the same run: batch 1 (one event at a time) against batching at 64 and 512.
    print(" ".join(
        f"us_per_event_{n // 1000}k_b{b}={results[(n, b)]:.1f}" for n, b in sorted(results)
    ) + f" speedup_3k_b64_vs_b1={results[(3000, 1)] / results[(3000, 64)]:.1f}")


if __name__ == "__main__":
    main()
