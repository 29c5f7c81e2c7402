"""Offline commands: prepare, train, evaluate, baselines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline.prepare import SPLITS
from offline.settings import OfflineSettings
from streamrec.cli.common import (
    DEFAULT_MODEL,
    CliError,
    add_format,
    add_hyperparameters,
    add_model_choice,
    add_models_dir,
    add_protocol,
    count,
    evaluation_protocol,
    load,
    model_family,
    non_negative_float,
    params,
    positive_float,
)


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

    days = {"test_days": args.test_days, "valid_days": args.valid_days}
    if args.split != "time" and any(value is not None for value in days.values()):
        raise CliError("--test-days and --valid-days apply only to --split time")
    report = prepare(
        args.input, args.format, Path(args.out), session_gap_s=args.session_gap, min_rating=args.min_rating,
        min_user_events=args.min_user_events, min_session_length=args.min_session_length,
        min_item_support=args.min_item_support, split=args.split,
        **{name: value for name, value in days.items() if value is not None},
    )
    print(json.dumps(report, indent=2, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> None:
    from offline.pipeline import train_version

    family = model_family(args)
    hyperparameters = params(args, family)
    train = load(args.train, args)
    valid = load(args.valid, args) if args.valid else None
    path, report, metrics = train_version(train, hyperparameters, Path(args.out), valid, progress=args.progress)
    best_epoch = getattr(report, "best_epoch", None)  # early stopping (sasrec)
    stopping = ""
    if best_epoch is not None:
        stopping = (f"; early stopping: best epoch {best_epoch}, then as many on all sessions"
                    if getattr(report, "refit", False)
                    else f"; early stopping: weights of epoch {best_epoch} of {len(report.epoch_losses)}")
    print(f"{family} model {path.name} written to {path} ({report.seconds:.1f} s, {report.events_per_s:.0f} "
          f"events/s{stopping})")
    if valid is not None:
        print(metric_table({f"{family} (valid)": {k[len('valid_'):]: v for k, v in metrics.items()
                                                   if k.startswith("valid_")}}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from modelkit.artifact import load_artifact
    from offline.pipeline import evaluate_artifact

    protocol = evaluation_protocol(args)
    artifact = load_artifact(Path(args.model))
    test = load(args.test, args)
    train = load(args.train, args) if args.train else None
    metrics, kept = evaluate_artifact(artifact, test, train, protocol)
    if args.json:
        result: dict[str, Any] = {"model_version": artifact.version, "dropped_events": kept.dropped_events,
                                  "protocol": protocol.as_dict()}
        if protocol.sampled:
            result["sampled"] = metrics  # never at the top level, where full-ranking metrics go
        else:
            result.update(metrics)
        print(json.dumps(result, sort_keys=True))
        return
    print(f"model {artifact.version}: {int(metrics['n_predictions'])} predictions, {protocol.describe()} "
          f"({kept.dropped_events} test events of unknown items or too-short sessions dropped)")
    if protocol.sampled:
        print(protocol.sampled_header())
    print(metric_table({artifact.manifest.model_family: metrics}))


def cmd_baselines(args: argparse.Namespace) -> None:
    from offline.pipeline import evaluate_baselines

    protocol = evaluation_protocol(args)
    results, kept = evaluate_baselines(load(args.train, args), load(args.test, args), protocol)
    if args.json:
        key = "sampled_baselines" if protocol.sampled else "baselines"  # sampled figures never under "baselines"
        print(json.dumps({"dropped_events": kept.dropped_events, "protocol": protocol.as_dict(), key: results},
                         sort_keys=True))
        return
    print(f"baselines: {protocol.describe()} ({kept.dropped_events} test events dropped)")
    if protocol.sampled:
        print(protocol.sampled_header())
    print(metric_table(results))


def add_parsers(commands: Any, settings: OfflineSettings) -> None:
    """prepare, train, evaluate, baselines."""
    prepare = commands.add_parser("prepare", help="clean, sessionize and split a click log; write stats and plots")
    prepare.add_argument("--input", required=True, help="click log file ('ml-100k' = MovieLens-100k from recbole)")
    add_format(prepare)
    prepare.add_argument("--min-user-events", type=count, default=0, metavar="N",
                         help="drop users with fewer events before sessionizing (formats with users; user-sequence: "
                              "the sequence length); default 0 keeps everyone")
    prepare.add_argument("--min-session-length", type=count, default=2, metavar="N",
                         help="drop sessions shorter than N events, recursively with --min-item-support (0: off)")
    prepare.add_argument("--min-item-support", type=count, default=5, metavar="N",
                         help="drop items with fewer than N events (0: off)")
    prepare.add_argument("--split", choices=SPLITS, default="time",
                         help="time: whole sessions by the day they end (default); leave-one-out: each sequence's "
                              "last item is its test target, the one before its validation target")
    prepare.add_argument("--test-days", type=positive_float, help="--split time: days of test sessions (default 1)")
    prepare.add_argument("--valid-days", type=non_negative_float,
                         help="--split time: days of validation sessions before them (default 1; 0: none)")
    prepare.add_argument("--out", required=True, help="output directory (replaced atomically)")
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train GRU4REC or SASRec and publish a new model version")
    train.add_argument("--train", required=True, help="training click log")
    add_format(train)
    train.add_argument("--valid", help="validation click log, evaluated after training")
    add_models_dir(train, settings)
    add_model_choice(train, f"default {DEFAULT_MODEL} (or the family of --preset or of the flags given)")
    add_hyperparameters(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="Recall/MRR/NDCG@k of a model version on a test log")
    evaluate.add_argument("--model", required=True, help="model version directory or MODELS_DIR/current")
    evaluate.add_argument("--test", required=True)
    evaluate.add_argument("--train", help="training log: restrict the test to items seen in it")
    add_format(evaluate)
    add_protocol(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)

    baselines = commands.add_parser("baselines", help="the same metrics for popularity, SR and V-SKNN")
    baselines.add_argument("--train", required=True)
    baselines.add_argument("--test", required=True)
    add_format(baselines)
    add_protocol(baselines)
    baselines.add_argument("--json", action="store_true", help="print one JSON object")
    baselines.set_defaults(func=cmd_baselines)
