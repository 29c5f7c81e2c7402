"""Shared driver of the quality benchmarks: baselines and GRU4REC trained and evaluated on one split."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from modelkit.artifact import load_artifact
from offline.hyperparams import XE_REFERENCE, GRU4RecParams
from offline.pipeline import evaluate_artifact, evaluate_baselines, train_version

COLUMNS = ("recall@10", "recall@20", "mrr@10", "mrr@20")


def run(train: pd.DataFrame, test: pd.DataFrame, title: str, progress: bool = False) -> dict[str, dict[str, float]]:
    """Print one table (baselines, GRU4REC-XE, GRU4REC-BPR-max) and return all rows."""
    logging.basicConfig(level=logging.WARNING)
    rows, kept = evaluate_baselines(train, test)
    gru_configs = {"gru4rec-xe": XE_REFERENCE, "gru4rec-bprmax": GRU4RecParams()}
    with tempfile.TemporaryDirectory() as models_dir:
        for name, params in gru_configs.items():
            path, report, _ = train_version(train, params, Path(models_dir), progress=progress)
            metrics, _ = evaluate_artifact(load_artifact(path), test, train)
            metrics["train_seconds"] = report.seconds
            metrics["train_events_per_s"] = report.events_per_s
            rows[name] = metrics
    print(f"{title}: {len(train)} training events, {int(rows['pop']['n_predictions'])} test predictions "
          f"({kept.dropped_events} test events dropped: unseen items / short sessions)")
    print(f"{'model':<16}" + "".join(f"{c:>11}" for c in COLUMNS) + f"{'train s':>10}{'train ev/s':>12}")
    for name, metrics in rows.items():
        seconds = metrics.get("train_seconds", metrics.get("fit_seconds", 0.0))
        speed = metrics.get("train_events_per_s")
        print(f"{name:<16}" + "".join(f"{metrics[c]:>11.4f}" for c in COLUMNS)
              + f"{seconds:>10.1f}" + (f"{speed:>12.0f}" if speed else f"{'-':>12}"))
    return rows
