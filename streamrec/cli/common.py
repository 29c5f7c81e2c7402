"""What every command group shares: the one-line error parser, argument validators, shared flags, helpers."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError

from offline.durations import parse_duration
from offline.loaders import FORMATS
from offline.settings import OfflineSettings

EXIT_USAGE = 2

T = TypeVar("T")
SignalHandler = Callable[[int, FrameType | None], Any]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit code 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def one_line(error: BaseException) -> str:
    """The error as one line (a pydantic ValidationError: its first problem)."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid {where}: {first['msg']}" if where else first["msg"]
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------------------------------------ validators


def checked(convert: Callable[[str], T], accept: Callable[[T], bool], message: str) -> Callable[[str], T]:
    """An argparse type: ``convert(text)``, refused with ``message.format(text=text)`` if that raises ValueError
    or ``accept`` says no (a ``convert`` that is itself a validator keeps its own message)."""
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(message.format(text=text)) from None
        if not accept(value):
            raise argparse.ArgumentTypeError(message.format(text=text))
        return value

    return parse


positive_float = checked(float, lambda v: 0 < v < math.inf, "expected a positive number, got {text!r}")
non_negative_float = checked(float, lambda v: 0 <= v < math.inf, "expected a number >= 0, got {text!r}")
count = checked(int, lambda v: v >= 0, "expected a whole number >= 0, got {text!r}")
at_least_one = checked(count, lambda v: v >= 1, "expected a whole number >= 1, got {text!r}")
port = checked(count, lambda v: v <= 65535, "port must be 0..65535, got {text}")


def duration(text: str) -> float:
    """An argparse type: a duration such as ``90``, ``30s``, ``1h`` or ``1d``, in seconds."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ------------------------------------------------------------------------------------------------ shared flags


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """``--session-gap`` and ``--min-rating``: how click logs of users are cut into sessions."""
    parser.add_argument("--session-gap", type=duration, default=3600.0, metavar="DURATION",
                        help="inactivity gap that cuts users into sessions (movielens, goodreads); default 1h")
    parser.add_argument("--min-rating", type=float, default=None, help="drop ratings below this value")


def add_format(parser: argparse.ArgumentParser) -> None:
    """A required ``--format`` and the session options."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="input file format")
    add_session_options(parser)


def add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                        help="Kafka bootstrap servers (env STREAMREC_BOOTSTRAP_SERVERS; default localhost:9092)")


def add_models_dir(parser: argparse.ArgumentParser, settings: OfflineSettings, flag: str = "--out") -> None:
    parser.add_argument(flag, default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")


def add_hyperparameters(parser: argparse.ArgumentParser) -> None:
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


# ------------------------------------------------------------------------------------------------ helpers


def load(path: str, args: argparse.Namespace) -> Any:
    """The click log at ``path`` in ``args.format``, cut into sessions by the session options."""
    from offline.loaders import load_events

    return load_events(path, args.format, session_gap_s=args.session_gap, min_rating=args.min_rating)


def params(args: argparse.Namespace) -> Any:
    """GRU4RecParams: the preset, then ``--config``, then the hyperparameter flags."""
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


def worker_settings(args: argparse.Namespace) -> Any:
    """WorkerSettings from the environment, ``--bootstrap`` overriding the bootstrap servers."""
    from stream_worker.settings import WorkerSettings

    overrides = {"bootstrap_servers": args.bootstrap} if getattr(args, "bootstrap", None) else {}
    return WorkerSettings(**overrides)


def quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every connection at INFO: keep its warnings only, unless --log-level debug."""
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.WARNING)


@contextlib.contextmanager
def signal_handlers(handler: SignalHandler) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with ``handler`` inside the block; the previous handlers come back after it."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
