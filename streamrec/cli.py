"""The ``streamrec`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from offline.durations import parse_duration
from offline.loaders import FORMATS
from offline.settings import OfflineSettings

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="input file format")
    parser.add_argument("--session-gap", type=_duration, default=3600.0, metavar="DURATION",
                        help="inactivity gap that cuts users into sessions (movielens, goodreads); default 1h")
    parser.add_argument("--min-rating", type=float, default=None, help="drop ratings below this value")


def _load(path: str, args: argparse.Namespace) -> Any:
    from offline.loaders import load_events

    return load_events(path, args.format, session_gap_s=args.session_gap, min_rating=args.min_rating)


def _metric_table(rows: dict[str, dict[str, float]], cutoffs: Sequence[int] = (1, 5, 10, 20)) -> str:
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


def _params(args: argparse.Namespace) -> Any:
    from offline.hyperparams import BPRMAX_REFERENCE, XE_REFERENCE, GRU4RecParams

    base = {"default": GRU4RecParams(), "xe": XE_REFERENCE, "bpr-max": BPRMAX_REFERENCE}[args.preset]
    values = base.model_dump()
    if args.config:
        try:
            values.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise CliError(f"cannot read config {args.config}: {error}") from None
    flags = {
        "loss": args.loss, "layers": args.layers, "batch_size": args.batch_size, "n_epochs": args.epochs,
        "learning_rate": args.learning_rate, "momentum": args.momentum, "dropout_p_embed": args.dropout_embed,
        "dropout_p_hidden": args.dropout_hidden, "n_sample": args.n_sample, "sample_alpha": args.sample_alpha,
        "bpreg": args.bpreg, "elu_param": args.elu_param, "logq": args.logq, "seed": args.seed,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    return GRU4RecParams.model_validate(values)


def cmd_train(args: argparse.Namespace) -> None:
    from offline.pipeline import train_version

    params = _params(args)
    train = _load(args.train, args)
    valid = _load(args.valid, args) if args.valid else None
    path, report, metrics = train_version(train, params, Path(args.out), valid, progress=args.progress)
    print(f"model {path.name} written to {path} ({report.seconds:.1f} s, {report.events_per_s:.0f} events/s)")
    if valid is not None:
        print(_metric_table({"gru4rec (valid)": {k[len('valid_'):]: v for k, v in metrics.items()
                                                  if k.startswith("valid_")}}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from modelkit.artifact import load_artifact
    from offline.pipeline import evaluate_artifact

    artifact = load_artifact(Path(args.model))
    test = _load(args.test, args)
    train = _load(args.train, args) if args.train else None
    metrics, kept = evaluate_artifact(artifact, test, train)
    if args.json:
        print(json.dumps({"model_version": artifact.version, "dropped_events": kept.dropped_events, **metrics},
                         sort_keys=True))
        return
    print(f"model {artifact.version}: {int(metrics['n_predictions'])} predictions "
          f"({kept.dropped_events} test events of unknown items or too-short sessions dropped)")
    print(_metric_table({"gru4rec": metrics}))


def cmd_baselines(args: argparse.Namespace) -> None:
    from offline.pipeline import evaluate_baselines

    results, kept = evaluate_baselines(_load(args.train, args), _load(args.test, args))
    if args.json:
        print(json.dumps({"dropped_events": kept.dropped_events, "baselines": results}, sort_keys=True))
        return
    print(_metric_table(results))


def cmd_demo(args: argparse.Namespace) -> None:
    from streamrec.demo import run_demo

    _quiet_kafka(args)
    run_demo(_params(args), rate=args.rate, progress=args.progress)


# ------------------------------------------------------------------------------------------ streaming tools


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text}")
    return value


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                        help="Kafka bootstrap servers (env STREAMREC_BOOTSTRAP_SERVERS; default localhost:9092)")


def _worker_settings(args: argparse.Namespace) -> Any:
    from stream_worker.settings import WorkerSettings

    overrides = {"bootstrap_servers": args.bootstrap} if getattr(args, "bootstrap", None) else {}
    return WorkerSettings(**overrides)


def _quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every connection at INFO: keep its warnings only, unless --log-level debug."""
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.WARNING)


def cmd_broker(args: argparse.Namespace) -> None:
    from stream_worker.broker import BrokerError, EmbeddedBroker

    _quiet_kafka(args)
    broker = EmbeddedBroker(port=args.port or None, log_path=Path(args.log) if args.log else None)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            broker.start()
        except BrokerError as error:
            raise CliError(str(error)) from None
        print(f"broker listening on {broker.bootstrap} (tansu pid {broker.pid}, memory storage: topics are lost "
              "when it stops); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                raise CliError(f"the tansu broker on {broker.bootstrap} exited unexpectedly")
    finally:
        code = broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"broker stopped (exit code {code})", flush=True)


def cmd_replay(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError

    from stream_worker.replay import ReplayError, replay_events

    _quiet_kafka(args)
    settings = _worker_settings(args)
    topic = args.topic or settings.clicks_topic
    frame = _load(args.input, args)
    started = time.monotonic()
    try:
        sent = replay_events(frame, settings.kafka_python_config(), topic, rate=args.rate, speedup=args.speedup,
                             limit=args.limit, progress=args.progress, partitions=settings.partitions)
    except (ReplayError, KafkaError) as error:
        raise CliError(str(error)) from None
    seconds = time.monotonic() - started
    print(f"sent {sent} events to {topic} at {settings.bootstrap_servers} in {seconds:.2f} s "
          f"({sent / max(seconds, 1e-9):.0f} events/s)")


def cmd_tail(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError

    from stream_worker.tail import iter_topic

    _quiet_kafka(args)
    settings = _worker_settings(args)
    records = iter_topic(settings.kafka_python_config(), args.topic, from_beginning=args.from_beginning,
                         limit=args.limit, idle_timeout_s=args.timeout)
    try:
        for record in records:
            print("null" if record.value is None else record.value.decode("utf-8", "replace"), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop following a topic
    except BrokenPipeError:  # e.g. `streamrec tail predictions | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KafkaError as error:
        raise CliError(str(error)) from None
    finally:
        records.close()


def cmd_worker(args: argparse.Namespace) -> None:
    from stream_worker.worker import run_worker

    _quiet_kafka(args)
    settings = _worker_settings(args)
    if args.models_dir:
        settings = settings.model_copy(update={"models_dir": Path(args.models_dir)})
    run_worker(settings, log_level=args.log_level.lower())


# ------------------------------------------------------------------------------------------------ retraining


def _bootstrap_configured(args: argparse.Namespace) -> bool:
    """Whether a Kafka bootstrap was given (flag or environment): only then are model updates published."""
    return bool(getattr(args, "bootstrap", None)) or any(
        name.upper() == "STREAMREC_BOOTSTRAP_SERVERS" for name in os.environ
    )


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
    return TopicSource(settings.kafka_python_config(), args.from_topic or settings.clicks_topic,
                       progress=args.progress)


def _format_report(report: Any) -> str:
    from offline.retrain import GATE_METRICS

    def iso(stamp: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))

    if report.accepted:
        head = f"model {report.version} accepted: now current (was {report.previous_version or 'none'})"
    else:
        head = f"model {report.version} rejected: current stays {report.previous_version} (kept in {report.path})"
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

    from offline.retrain import CycleLoop, RetrainError, kafka_publisher, retrain_cycle

    _quiet_kafka(args)
    settings = _worker_settings(args)
    source = _retrain_source(args, settings)
    params = _params(args)
    if args.gate_days >= args.window_days:
        raise CliError(f"--window-days ({args.window_days:g}) must be larger than --gate-days ({args.gate_days:g})")
    publish = None
    if _bootstrap_configured(args) or not args.input:  # a topic source has a broker to publish to
        publish = kafka_publisher(settings.kafka_python_config(), settings.model_updates_topic)

    def cycle() -> None:
        report = retrain_cycle(
            source, Path(args.out), params, window_days=args.window_days, gate_days=args.gate_days,
            margin=args.margin, warm_start=not args.from_scratch, keep_versions=args.keep, publish=publish,
            keep_missing_items=args.keep_missing_items, progress=args.progress,
        )
        print(json.dumps(report.to_dict(), sort_keys=True) if args.json else _format_report(report), flush=True)

    if args.every is None:
        try:
            cycle()
        except (RetrainError, KafkaError) as error:
            raise CliError(_one_line(error)) from None
        return
    loop = CycleLoop(cycle, args.every, max_cycles=args.max_cycles)

    def on_signal(signum: int, frame: Any) -> None:
        loop.stop()
        if loop.in_cycle:  # abort the running cycle: nothing is half-published (atomic renames)
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        logging.getLogger(__name__).info("retraining every %g s (Ctrl-C or SIGTERM stops)", args.every)
        loop.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if loop.last_failed and not loop.stop_event.is_set():
        raise CliError(f"{loop.failures} of {loop.cycles} cycles failed; the last one: {loop.last_error}")


def cmd_models_list(args: argparse.Namespace) -> None:
    from offline.retrain import GATE_METRICS, describe_versions

    rows = describe_versions(Path(args.dir), include_rejected=args.rejected)
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
    from offline.retrain import RetrainError, kafka_publisher, rollback

    _quiet_kafka(args)
    publish = None
    if _bootstrap_configured(args):
        settings = _worker_settings(args)
        publish = kafka_publisher(settings.kafka_python_config(), settings.model_updates_topic)
    try:
        previous, sent = rollback(Path(args.dir), args.version, publish)
    except RetrainError as error:
        raise CliError(str(error)) from None
    note = "" if publish is None else (" (model-update message sent)" if sent else " (model-update message FAILED)")
    print(f"current: {previous or 'none'} -> {args.version}{note}")


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_retrain_parsers(commands: Any, settings: OfflineSettings) -> None:
    retrain = commands.add_parser(
        "retrain", help="retrain on the last days of clicks, gate the candidate against current, publish it")
    source = retrain.add_mutually_exclusive_group()
    source.add_argument("--from-topic", nargs="?", const="", default=None, metavar="TOPIC",
                        help="read ClickEvent JSON from a topic (default: env STREAMREC_CLICKS_TOPIC or 'clicks'); "
                             "the default source")
    source.add_argument("--input", action="append", metavar="FILE", help="read click log file(s) instead")
    retrain.add_argument("--format", choices=FORMATS, help="format of --input files")
    retrain.add_argument("--session-gap", type=_duration, default=3600.0, metavar="DURATION",
                         help="inactivity gap that cuts users into sessions (movielens, goodreads); default 1h")
    retrain.add_argument("--min-rating", type=float, default=None, help="drop ratings below this value")
    _add_bootstrap(retrain)
    retrain.add_argument("--window-days", type=_positive_float, default=settings.retrain_window_days, metavar="N",
                         help="days of clicks per cycle, ending at the newest event, gate days included "
                              f"(env STREAMREC_RETRAIN_WINDOW_DAYS; default {settings.retrain_window_days:g})")
    retrain.add_argument("--gate-days", type=_positive_float, default=settings.retrain_gate_days, metavar="N",
                         help="newest days held out to compare candidate and current "
                              f"(default {settings.retrain_gate_days:g})")
    retrain.add_argument("--margin", type=_margin, default=settings.retrain_margin,
                         help="publish only if MRR@20 and Recall@20 >= current's minus this "
                              f"(default {settings.retrain_margin:g})")
    retrain.add_argument("--from-scratch", action="store_true", help="do not warm-start from the current model")
    retrain.add_argument("--keep-missing-items", action="store_true",
                         help="keep items of the current model that nobody clicked in the window (default: drop)")
    retrain.add_argument("--keep", type=_at_least_one, default=settings.retrain_keep_versions, metavar="N",
                         help="versions to keep besides current and the one it replaced "
                              f"(default {settings.retrain_keep_versions})")
    retrain.add_argument("--out", default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")
    retrain.add_argument("--every", type=_duration, metavar="DURATION",
                         help="loop: one cycle every DURATION (e.g. 1d) until Ctrl-C/SIGTERM; failed cycles are "
                              "logged and the loop goes on")
    retrain.add_argument("--max-cycles", type=_at_least_one, metavar="N", help="with --every: stop after N cycles")
    retrain.add_argument("--json", action="store_true", help="print one JSON object per cycle")
    _add_hyperparameters(retrain)
    retrain.set_defaults(func=cmd_retrain)

    models = commands.add_parser("models", help="list model versions or roll current back")
    actions = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    listing = actions.add_parser("list", help="versions, oldest first: created, items, gate decision, metrics")
    listing.add_argument("--dir", default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")
    listing.add_argument("--rejected", action="store_true", help="also list refused candidates (MODELS_DIR/rejected)")
    listing.add_argument("--json", action="store_true", help="print one JSON list")
    listing.set_defaults(func=cmd_models_list)
    back = actions.add_parser("rollback", help="point current at an existing version (and publish a model update)")
    back.add_argument("version", metavar="VERSION")
    back.add_argument("--dir", default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")
    _add_bootstrap(back)
    back.set_defaults(func=cmd_models_rollback)


def build_parser() -> argparse.ArgumentParser:
    settings = OfflineSettings()
    parser = _Parser(prog="streamrec", description=__doc__)
    parser.add_argument("--log-level", default=settings.log_level, help="logging level (env STREAMREC_LOG_LEVEL)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=settings.progress,
                        help="hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    prepare = commands.add_parser("prepare", help="clean, sessionize and split a click log; write stats and plots")
    prepare.add_argument("--input", required=True, help="click log file ('ml-100k' = MovieLens-100k from recbole)")
    _add_format(prepare)
    prepare.add_argument("--min-session-length", type=int, default=2)
    prepare.add_argument("--min-item-support", type=int, default=5)
    prepare.add_argument("--test-days", type=float, default=1.0)
    prepare.add_argument("--valid-days", type=float, default=1.0)
    prepare.add_argument("--out", required=True, help="output directory (replaced atomically)")
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train GRU4REC and publish a new model version")
    train.add_argument("--train", required=True, help="training click log")
    _add_format(train)
    train.add_argument("--valid", help="validation click log, evaluated after training")
    train.add_argument("--out", default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")
    _add_hyperparameters(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="Recall/MRR/NDCG@k of a model version on a test log")
    evaluate.add_argument("--model", required=True, help="model version directory or MODELS_DIR/current")
    evaluate.add_argument("--test", required=True)
    evaluate.add_argument("--train", help="training log: restrict the test to items seen in it")
    _add_format(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)

    baselines = commands.add_parser("baselines", help="the same metrics for popularity, SR and V-SKNN")
    baselines.add_argument("--train", required=True)
    baselines.add_argument("--test", required=True)
    _add_format(baselines)
    baselines.add_argument("--json", action="store_true", help="print one JSON object")
    baselines.set_defaults(func=cmd_baselines)

    demo = commands.add_parser("demo", help="the whole product on the bundled YOOCHOOSE sample: embedded broker, "
                                           "training if no model, worker, replay of the last day, live summary")
    demo.add_argument("--rate", type=_positive_float, default=None, help="replay at most this many clicks/s")
    _add_hyperparameters(demo)
    demo.set_defaults(func=cmd_demo)

    broker = commands.add_parser("broker", help="run an embedded tansu Kafka broker (memory storage) until Ctrl-C")
    broker.add_argument("--port", type=_port, default=9092, help="port on localhost; 0 = any free port (default 9092)")
    broker.add_argument("--log", metavar="FILE", help="append the broker's own output to FILE")
    broker.set_defaults(func=cmd_broker)

    replay = commands.add_parser("replay", help="produce a click log to Kafka as ClickEvent JSON in time order")
    replay.add_argument("input", metavar="FILE", help="click log to replay")
    _add_format(replay)
    _add_bootstrap(replay)
    replay.add_argument("--topic", help="target topic (default: env STREAMREC_CLICKS_TOPIC or 'clicks')")
    replay.add_argument("--rate", type=_positive_float, metavar="N", help="at most N events per second")
    replay.add_argument("--speedup", type=_positive_float, metavar="X",
                        help="keep the original gaps between events, divided by X (3600: an hour per second)")
    replay.add_argument("--limit", type=_count, metavar="N", help="replay only the first N events (in time order)")
    replay.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="hide the progress bar")
    replay.set_defaults(func=cmd_replay)

    tail = commands.add_parser("tail", help="print the messages of a topic, one JSON value per line")
    tail.add_argument("topic", metavar="TOPIC")
    _add_bootstrap(tail)
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the end")
    tail.add_argument("--limit", type=_count, metavar="N", help="stop after N messages")
    tail.add_argument("--timeout", type=_duration, metavar="S",
                      help="stop after S seconds without messages (default: follow until Ctrl-C)")
    tail.set_defaults(func=cmd_tail)

    worker = commands.add_parser("worker", help="run the Faust worker: clicks -> session state -> predictions")
    _add_bootstrap(worker)
    worker.add_argument("--models-dir", help="models directory to serve current from (env STREAMREC_MODELS_DIR)")
    worker.set_defaults(func=cmd_worker)
    _add_retrain_parsers(commands, settings)
    return parser


def _add_hyperparameters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file of hyperparameters")
    parser.add_argument("--preset", choices=("default", "xe", "bpr-max"), default="default",
                        help="start from the tuned default or an official reference setting")
    parser.add_argument("--loss", choices=("cross-entropy", "bpr-max"))
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 100 or 100,100")
    for flag, kind in (("--batch-size", int), ("--epochs", int), ("--learning-rate", float), ("--momentum", float),
                       ("--dropout-embed", float), ("--dropout-hidden", float), ("--n-sample", int),
                       ("--sample-alpha", float), ("--bpreg", float), ("--elu-param", float), ("--logq", float),
                       ("--seed", int)):
        parser.add_argument(flag, type=kind)


def _one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid {where}: {first['msg']}" if where else first["msg"]
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (CliError, ValueError, OSError, ValidationError) as error:
        # DataFormatError and ArtifactError are ValueErrors; nothing was published when they are raised.
        print(f"streamrec {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"streamrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
