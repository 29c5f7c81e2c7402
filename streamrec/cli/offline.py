"""Offline commands: prepare, train, evaluate, baselines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline.settings import OfflineSettings
from streamrec.cli.common import add_format, add_hyperparameters, add_models_dir, load, params


def metric_table(rows: dict[str, dict[str, float]], cutoffs: Sequence[int] = (1, 5, 10, 20)) -> str:
    """Recall, MRR and NDCG at every cutoff, one row per model."""
    header = f"{'model':<16}" + "".join(f"{m + '@' + str(k):>11}" for m in ("recall", "mrr", "ndcg") for k in cutoffs)
    lines = [header]
    for name, metrics in rows.items():
        values = "".join(f"{metrics[f'{m}@{k}']:>11.4f}" for m in ("recall", "mrr", "ndcg") for k in cutoffs)
        lines.append(f"{name:<16}{values}")
    return "\n".join(lines)


def cmd_prepare(args: argparse.Namespace) -> None:
    from offline.prepare import prepare

    report = prepare(
        args.input, args.format, Path(args.out), session_gap_s=args.session_gap, min_rating=args.min_rating,
        min_session_length=args.min_session_length, min_item_support=args.min_item_support,
        test_days=args.test_days, valid_days=args.valid_days,
    )
    print(json.dumps(report, indent=2, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> None:
    from offline.pipeline import train_version

    hyperparameters = params(args)
    train = load(args.train, args)
    valid = load(args.valid, args) if args.valid else None
    path, report, metrics = train_version(train, hyperparameters, Path(args.out), valid, progress=args.progress)
    print(f"model {path.name} written to {path} ({report.seconds:.1f} s, {report.events_per_s:.0f} events/s)")
    if valid is not None:
        print(metric_table({"gru4rec (valid)": {k[len('valid_'):]: v for k, v in metrics.items()
                                                 if k.startswith("valid_")}}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from modelkit.artifact import load_artifact
    from offline.pipeline import evaluate_artifact

    artifact = load_artifact(Path(args.model))
    test = load(args.test, args)
    train = load(args.train, args) if args.train else None
    metrics, kept = evaluate_artifact(artifact, test, train)
    if args.json:
        print(json.dumps({"model_version": artifact.version, "dropped_events": kept.dropped_events, **metrics},
                         sort_keys=True))
        return
    print(f"model {artifact.version}: {int(metrics['n_predictions'])} predictions "
          f"({kept.dropped_events} test events of unknown items or too-short sessions dropped)")
    print(metric_table({"gru4rec": metrics}))


def cmd_baselines(args: argparse.Namespace) -> None:
    from offline.pipeline import evaluate_baselines

    results, kept = evaluate_baselines(load(args.train, args), load(args.test, args))
    if args.json:
        print(json.dumps({"dropped_events": kept.dropped_events, "baselines": results}, sort_keys=True))
        return
    print(metric_table(results))


def add_parsers(commands: Any, settings: OfflineSettings) -> None:
    """prepare, train, evaluate, baselines."""
    prepare = commands.add_parser("prepare", help="clean, sessionize and split a click log; write stats and plots")
    prepare.add_argument("--input", required=True, help="click log file ('ml-100k' = MovieLens-100k from recbole)")
    add_format(prepare)
    prepare.add_argument("--min-session-length", type=int, default=2)
    prepare.add_argument("--min-item-support", type=int, default=5)
    prepare.add_argument("--test-days", type=float, default=1.0)
    prepare.add_argument("--valid-days", type=float, default=1.0)
    prepare.add_argument("--out", required=True, help="output directory (replaced atomically)")
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train GRU4REC and publish a new model version")
    train.add_argument("--train", required=True, help="training click log")
    add_format(train)
    train.add_argument("--valid", help="validation click log, evaluated after training")
    add_models_dir(train, settings)
    add_hyperparameters(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="Recall/MRR/NDCG@k of a model version on a test log")
    evaluate.add_argument("--model", required=True, help="model version directory or MODELS_DIR/current")
    evaluate.add_argument("--test", required=True)
    evaluate.add_argument("--train", help="training log: restrict the test to items seen in it")
    add_format(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)

    baselines = commands.add_parser("baselines", help="the same metrics for popularity, SR and V-SKNN")
    baselines.add_argument("--train", required=True)
    baselines.add_argument("--test", required=True)
    add_format(baselines)
    baselines.add_argument("--json", action="store_true", help="print one JSON object")
    baselines.set_defaults(func=cmd_baselines)
