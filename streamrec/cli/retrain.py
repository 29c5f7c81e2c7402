"""Retraining commands: retrain (once or on a schedule), models list, models rollback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from offline.loaders import FORMATS
from offline.settings import OfflineSettings
from streamrec.cli.common import (
    DEFAULT_MODEL,
    CliError,
    Parser,
    add_bootstrap,
    add_hyperparameters,
    add_model_choice,
    add_models_dir,
    add_session_options,
    at_least_one,
    duration,
    model_family,
    non_negative_float,
    one_line,
    params,
    positive_float,
    quiet_kafka,
    signal_handlers,
    worker_settings,
)


def _bootstrap_configured(args: argparse.Namespace) -> bool:
    """Whether a Kafka bootstrap was given (flag or environment): only then are model updates published."""
    return bool(getattr(args, "bootstrap", None)) or any(
        name.upper() == "STREAMREC_BOOTSTRAP_SERVERS" for name in os.environ
    )


def _publisher(settings: Any) -> Any:
    """The model-updates publisher for the configured broker and topic."""
    from stream_worker.model_updates import kafka_publisher

    return kafka_publisher(settings.kafka_python_config(), settings.model_updates_topic)


def _retrain_source(args: argparse.Namespace, settings: Any) -> Any:
    from offline.retrain import FileSource, TopicSource

    if args.input:
        if not args.format:
            raise CliError("--input needs --format (" + ", ".join(FORMATS) + ")")
        missing = [path for path in args.input if not Path(path).is_file()]
        if missing:
            raise CliError(f"{missing[0]}: file not found")
        return FileSource(tuple(Path(p) for p in args.input), args.format, session_gap_s=args.session_gap,
                          min_rating=args.min_rating)
    if args.format:
        raise CliError("--format applies only to --input files")
    from stream_worker.topic_reader import click_window_reader

    return TopicSource(args.from_topic or settings.clicks_topic,
                       click_window_reader(settings.kafka_python_config(), progress=args.progress))


def _current_family(models_dir: Path) -> str | None:
    """The model family of ``models_dir``'s current version; None without one (or when its manifest is
    unreadable: the cycle then reports the broken artifact)."""
    from modelkit.artifact import MANIFEST_FILE, current_version
    from schemas import ModelManifest

    version = current_version(models_dir)
    if version is None:
        return None
    try:
        return ModelManifest.model_validate_json((models_dir / version / MANIFEST_FILE).read_bytes()).model_family
    except (OSError, ValueError):
        return None


def _retrain_params(args: argparse.Namespace) -> Any:
    """The hyperparameters of the next candidate: of the family ``--model`` or ``--preset`` names, else of
    current's family (so a SASRec current stays SASRec), else of the default family."""
    return params(args, model_family(args, _current_family(Path(args.out))))


def _format_report(report: Any) -> str:
    from offline.retrain import GATE_METRICS

    def iso(stamp: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))

    if report.accepted:
        head = f"{report.family} model {report.version} accepted: now current (was {report.previous_version or 'none'})"
    else:
        head = (f"{report.family} model {report.version} rejected: current stays {report.previous_version} "
                f"(kept in {report.path})")
    metrics = ", ".join(
        f"{name} {report.candidate_metrics[name]:.4f}"
        + (f" vs {report.current_metrics[name]:.4f}" if report.current_metrics is not None else "")
        for name in GATE_METRICS
    )
    growth = f"+{report.items_added}/-{report.items_dropped}"
    full = ", ".join(f"{name} {report.candidate_full_metrics[name]:.4f}" for name in GATE_METRICS)
    lines = [
        f"{head}; {report.reason}",
        f"  gate: {report.gate_events} events from {iso(report.gate_start)}; candidate vs current on the "
        f"{int(report.candidate_metrics['n_predictions'])} predictions both can make: {metrics}; candidate on all "
        f"{int(report.candidate_full_metrics['n_predictions'])}: {full}"
        + (f" (warm start from {report.parent_version})" if report.parent_version else " (from scratch)"),
        f"  window {iso(report.window_start)} .. {iso(report.window_end)}: {report.window_events} events, trained on "
        f"{report.train_events} events / {report.train_sessions} sessions, {report.n_items} items ({growth})",
        "  steps: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in report.timings.items()),
    ]
    if report.read is not None:
        read = report.read
        lines.append(f"  topic {read.topic}: {read.records_read} records, {read.valid} in the window, "
                     f"{read.bad_total} bad {read.bad or ''}, {read.duplicates} duplicates; time index: "
                     f"{read.time_index.split(' (')[0]}")
    if report.deleted_versions:
        lines.append("  retention deleted " + ", ".join(report.deleted_versions))
    if report.publish_error:
        lines.append(f"  model-update message failed: {report.publish_error}")
    return "\n".join(lines)


def cmd_retrain(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError

    from offline.retrain import CycleLoop, RetrainError, retrain_cycle

    quiet_kafka(args)
    settings = worker_settings(args)
    source = _retrain_source(args, settings)
    _retrain_params(args)  # bad hyperparameters: one line before anything runs
    if args.gate_days >= args.window_days:
        raise CliError(f"--window-days ({args.window_days:g}) must be larger than --gate-days ({args.gate_days:g})")
    publish = None
    if _bootstrap_configured(args) or not args.input:  # a topic source has a broker to publish to
        publish = _publisher(settings)

    def cycle() -> None:  # current's family is read again every cycle (it may have been rolled back)
        report = retrain_cycle(
            source, Path(args.out), _retrain_params(args), window_days=args.window_days, gate_days=args.gate_days,
            margin=args.margin, warm_start=not args.from_scratch, keep_versions=args.keep, publish=publish,
            keep_missing_items=args.keep_missing_items, progress=args.progress,
        )
        print(json.dumps(report.to_dict(), sort_keys=True) if args.json else _format_report(report), flush=True)

    if args.every is None:
        try:
            cycle()
        except (RetrainError, KafkaError) as error:
            raise CliError(one_line(error)) from None
        return
    loop = CycleLoop(cycle, args.every, max_cycles=args.max_cycles)

    def on_signal(signum: int, frame: Any) -> None:
        loop.stop()
        if loop.in_cycle:  # abort the running cycle: nothing is half-published (atomic renames)
            raise KeyboardInterrupt

    with signal_handlers(on_signal):
        logging.getLogger(__name__).info("retraining every %g s (Ctrl-C or SIGTERM stops)", args.every)
        loop.run()
    if loop.last_failed and not loop.stop_event.is_set():
        raise CliError(f"{loop.failures} of {loop.cycles} cycles failed; the last one: {loop.last_error}")


def cmd_models_list(args: argparse.Namespace) -> None:
    from modelkit.registry import describe_versions
    from offline.retrain import GATE_METRICS

    rows = describe_versions(Path(args.dir), GATE_METRICS, include_rejected=args.rejected)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        print(f"no model versions in {args.dir}")
        return
    header = f"  {'version':<26}{'created':<22}{'items':>7}  {'decision':<10}" + "".join(
        f"{name:>11}" for name in GATE_METRICS) + "  parent"
    lines = [header]
    for row in rows:
        mark = "*" if row["current"] else ("r" if row["rejected"] else " ")
        if "error" in row:
            lines.append(f"{mark} {row['version']:<26}unreadable: {row['error']}")
            continue
        metrics = "".join(f"{row[name]:>11.4f}" if row[name] is not None else f"{'-':>11}" for name in GATE_METRICS)
        lines.append(f"{mark} {row['version']:<26}{row['created']:<22}{row['n_items']:>7}  {row['decision']:<10}"
                     f"{metrics}  {row['parent'] or '-'}")
    print("\n".join(lines))
    print("(* current" + (", r rejected candidate)" if args.rejected else ")"))


def cmd_models_rollback(args: argparse.Namespace) -> None:
    from modelkit.registry import RetrainError, rollback

    quiet_kafka(args)
    publish = _publisher(worker_settings(args)) if _bootstrap_configured(args) else None
    try:
        previous, sent = rollback(Path(args.dir), args.version, publish)
    except RetrainError as error:
        raise CliError(str(error)) from None
    note = "" if publish is None else (" (model-update message sent)" if sent else " (model-update message FAILED)")
    print(f"current: {previous or 'none'} -> {args.version}{note}")


def add_parsers(commands: Any, settings: OfflineSettings) -> None:
    """retrain, models list, models rollback."""
    retrain = commands.add_parser(
        "retrain", help="retrain on the last days of clicks, gate the candidate against current, publish it")
    source = retrain.add_mutually_exclusive_group()
    source.add_argument("--from-topic", nargs="?", const="", default=None, metavar="TOPIC",
                        help="read ClickEvent JSON from a topic (default: env STREAMREC_CLICKS_TOPIC or 'clicks'); "
                             "the default source")
    source.add_argument("--input", action="append", metavar="FILE", help="read click log file(s) instead")
    retrain.add_argument("--format", choices=FORMATS, help="format of --input files")
    add_session_options(retrain)
    add_bootstrap(retrain)
    retrain.add_argument("--window-days", type=positive_float, default=settings.retrain_window_days, metavar="N",
                         help="days of clicks per cycle, ending at the newest event, gate days included "
                              f"(env STREAMREC_RETRAIN_WINDOW_DAYS; default {settings.retrain_window_days:g})")
    retrain.add_argument("--gate-days", type=positive_float, default=settings.retrain_gate_days, metavar="N",
                         help="newest days held out to compare candidate and current "
                              f"(default {settings.retrain_gate_days:g})")
    retrain.add_argument("--margin", type=non_negative_float, default=settings.retrain_margin,
                         help="publish only if MRR@20 and Recall@20 >= current's minus this "
                              f"(default {settings.retrain_margin:g})")
    retrain.add_argument("--from-scratch", action="store_true", help="do not warm-start from the current model")
    retrain.add_argument("--keep-missing-items", action="store_true",
                         help="keep items of the current model that nobody clicked in the window (default: drop)")
    retrain.add_argument("--keep", type=at_least_one, default=settings.retrain_keep_versions, metavar="N",
                         help="versions to keep besides current and the one it replaced "
                              f"(default {settings.retrain_keep_versions})")
    add_models_dir(retrain, settings)
    retrain.add_argument("--every", type=duration, metavar="DURATION",
                         help="loop: one cycle every DURATION (e.g. 1d) until Ctrl-C/SIGTERM; failed cycles are "
                              "logged and the loop goes on")
    retrain.add_argument("--max-cycles", type=at_least_one, metavar="N", help="with --every: stop after N cycles")
    retrain.add_argument("--json", action="store_true", help="print one JSON object per cycle")
    add_model_choice(retrain, f"default: the family of current (or of --preset), {DEFAULT_MODEL} without one")
    add_hyperparameters(retrain)
    retrain.set_defaults(func=cmd_retrain)

    models = commands.add_parser("models", help="list model versions or roll current back")
    actions = models.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    listing = actions.add_parser("list", help="versions, oldest first: created, items, gate decision, metrics")
    add_models_dir(listing, settings, "--dir")
    listing.add_argument("--rejected", action="store_true", help="also list refused candidates (MODELS_DIR/rejected)")
    listing.add_argument("--json", action="store_true", help="print one JSON list")
    listing.set_defaults(func=cmd_models_list)
    back = actions.add_parser("rollback", help="point current at an existing version (and publish a model update)")
    back.add_argument("version", metavar="VERSION")
    add_models_dir(back, settings, "--dir")
    add_bootstrap(back)
    back.set_defaults(func=cmd_models_rollback)
