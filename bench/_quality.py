"""Shared driver of the quality benchmarks: baselines, GRU4REC, SASRec and the served default (a blend) trained
and evaluated on one split."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from _support import per_event_us

from modelkit.artifact import load_artifact
from modelkit.blend import member_fields
from offline.blend_params import BlendParams
from offline.hyperparams import XE_REFERENCE, GRU4RecParams
from offline.pipeline import TrainingParams, evaluate_artifact, evaluate_baselines, train_version
from offline.protocols import NEXT_CLICK, EvalProtocol
from offline.sasrec_params import BCE_RECIPE, SASRecParams
from stream_worker.serving import ServingModel

COLUMNS = ("recall@10", "recall@20", "mrr@10", "mrr@20")
SERVE_BATCH = 512  # clicks per serving step when timing a model (the worker's batches under load)
MODELS: dict[str, TrainingParams] = {
    "gru4rec-xe": XE_REFERENCE,
    "gru4rec-bprmax": GRU4RecParams(),  # the GRU4REC default
    "sasrec-bce": BCE_RECIPE,  # the seed notebook's recipe
    "sasrec": SASRecParams(),  # the SASRec default
    "default": BlendParams(),  # what `streamrec train` trains without a model flag
}


def run(train: pd.DataFrame, test: pd.DataFrame, title: str, progress: bool = False,
        protocol: EvalProtocol = NEXT_CLICK, columns: tuple[str, ...] = COLUMNS) -> dict[str, dict[str, float]]:
    """Print one table (baselines, then every model of MODELS trained on ``train``) and return all rows."""
    return run_protocols(train, test, title, (protocol,), progress, columns)[0]


def run_protocols(train: pd.DataFrame, test: pd.DataFrame, title: str, protocols: Sequence[EvalProtocol],
                  progress: bool = False, columns: tuple[str, ...] = COLUMNS) -> list[dict[str, dict[str, float]]]:
    """Train every model of MODELS once on ``train``, then print one table per evaluation protocol."""
    logging.basicConfig(level=logging.WARNING)
    tables = [evaluate_baselines(train, test, protocol) for protocol in protocols]
    results = [rows for rows, _ in tables]
    with tempfile.TemporaryDirectory() as models_dir:
        for name, params in MODELS.items():
            path, report, _ = train_version(train, params, Path(models_dir), progress=progress)
            artifact = load_artifact(path)
            serve_us, _ = per_event_us(ServingModel(artifact), SERVE_BATCH, 20, seconds=0.5, repeats=3)
            if name == "default":
                print(default_weights(artifact.manifest.hyperparameters, artifact.manifest.metrics))
            for rows, protocol in zip(results, protocols, strict=True):
                metrics, _ = evaluate_artifact(artifact, test, train, protocol)
                metrics["train_seconds"] = report.seconds
                metrics["train_events_per_s"] = report.events_per_s
                metrics["serve_us"] = serve_us
                rows[name] = metrics
    for (rows, kept), protocol in zip(tables, protocols, strict=True):
        if protocol.sampled:
            print(protocol.sampled_header())
        print(f"{title} ({protocol.describe()}): {len(train)} training events, {int(rows['pop']['n_predictions'])} "
              f"test predictions ({kept.dropped_events} test events dropped: unseen items / short sessions)")
        print_table(rows, columns)
    return results


def default_weights(hyperparameters: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    """One line: the default blend's member weights and, when fitted, the held-out figures behind them."""
    weights = ", ".join(f"{member['family']} {member['weight']:.3g}" for member in member_fields(hyperparameters))
    if "blend_fit_mrr@20" not in metrics:
        return f"default blend weights: {weights} (fixed)"
    return (f"default blend weights: {weights}, fitted on {metrics['blend_fit_predictions']:.0f} held-out next "
            f"clicks: Recall@20 / MRR@20 {metrics['blend_fit_recall@20']:.4f} / {metrics['blend_fit_mrr@20']:.4f} "
            f"(prior weights {metrics['blend_prior_recall@20']:.4f} / {metrics['blend_prior_mrr@20']:.4f})")


def print_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> None:
    """One row per model: the metric columns, training (or fitting) seconds and training events/s, and the
    serving cost (µs per click for step + scores + top-20 at batch SERVE_BATCH; baselines are not served)."""
    print(f"{'model':<16}" + "".join(f"{c:>11}" for c in columns) + f"{'train s':>10}{'train ev/s':>12}"
          + f"{'serve us':>10}")
    for name, metrics in rows.items():
        seconds = metrics.get("train_seconds", metrics.get("fit_seconds", 0.0))
        speed, serve = metrics.get("train_events_per_s"), metrics.get("serve_us")
        print(f"{name:<16}" + "".join(f"{metrics[c]:>11.4f}" for c in columns)
              + f"{seconds:>10.1f}" + (f"{speed:>12.0f}" if speed else f"{'-':>12}")
              + (f"{serve:>10.1f}" if serve else f"{'-':>10}"))
