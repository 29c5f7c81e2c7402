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
from offline.protocols import TARGETS, EvalProtocol
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


def session_gap(text: str) -> float:
    """An argparse type: a duration, or ``none`` (infinity: each user's events form one session)."""
    return math.inf if text.strip().lower() == "none" else duration(text)


# ------------------------------------------------------------------------------------------------ shared flags


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """``--session-gap`` and ``--min-rating``: how click logs of users are cut into sessions."""
    parser.add_argument("--session-gap", type=session_gap, default=3600.0, metavar="DURATION",
                        help="inactivity gap that cuts users into sessions (movielens, goodreads; default 1h); "
                             "'none': one session per user")
    parser.add_argument("--min-rating", type=float, default=None, help="drop ratings below this value")


def add_format(parser: argparse.ArgumentParser) -> None:
    """A required ``--format`` and the session options."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="input file format")
    add_session_options(parser)


def add_protocol(parser: argparse.ArgumentParser) -> None:
    """The evaluation protocol: ``--protocol``, ``--exclude-seen``, ``--sampled-negatives N`` and ``--seed``."""
    group = parser.add_argument_group("evaluation protocol (default: every next click, ranked among all items)")
    group.add_argument("--protocol", choices=TARGETS, default="next-click",
                       help="next-click: every next click given its prefix; last-item: each sequence's last item "
                            "given everything before it (leave-one-out test.tsv)")
    group.add_argument("--exclude-seen", action="store_true",
                       help="items already in the sequence cannot be recommended (scored -inf before ranking)")
    group.add_argument("--sampled-negatives", type=at_least_one, metavar="N",
                       help="rank the target against N random items absent from its sequence instead of the whole "
                            "catalogue (SAMPLED metrics, not comparable with full ranking)")
    group.add_argument("--seed", type=count, help="seed of --sampled-negatives (default 0)")


def evaluation_protocol(args: argparse.Namespace) -> EvalProtocol:
    """The EvalProtocol of the ``add_protocol`` flags; ``--seed`` without ``--sampled-negatives`` is an error."""
    if args.seed is not None and args.sampled_negatives is None:
        raise CliError("--seed applies only with --sampled-negatives")
    return EvalProtocol(targets=args.protocol, exclude_seen=args.exclude_seen,
                        sampled_negatives=args.sampled_negatives or 0, seed=args.seed or 0)


def add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                        help="Kafka bootstrap servers (env STREAMREC_BOOTSTRAP_SERVERS; default localhost:9092)")


def add_models_dir(parser: argparse.ArgumentParser, settings: OfflineSettings, flag: str = "--out") -> None:
    parser.add_argument(flag, default=str(settings.models_dir), help="models directory (env STREAMREC_MODELS_DIR)")


MODEL_FAMILIES = ("blend", "gru4rec", "sasrec")  # the families streamrec can train
DEFAULT_MODEL = "blend"  # GRU4REC + SASRec + V-SKNN: the most accurate (docs/benchmarks.md)
PRESET_FAMILY = {"default": None, "xe": "gru4rec", "bpr-max": "gru4rec", "sasrec-bce": "sasrec"}
BLEND_FLAGS = {"seed"}  # the shared flags a blend takes (--seed: the first run's seed of both families)
# Hyperparameter flags (argparse dest -> params field): shared, then those of one family only.
SHARED_FLAGS = {"loss": "loss", "batch_size": "batch_size", "epochs": "n_epochs", "learning_rate": "learning_rate",
                "seed": "seed"}
FAMILY_FLAGS = {
    "gru4rec": {"layers": "layers", "momentum": "momentum", "dropout_embed": "dropout_p_embed",
                "dropout_hidden": "dropout_p_hidden", "n_sample": "n_sample", "sample_alpha": "sample_alpha",
                "bpreg": "bpreg", "elu_param": "elu_param", "logq": "logq"},
    "sasrec": {"max_len": "max_len", "hidden": "hidden_size", "blocks": "n_blocks", "heads": "n_heads",
               "dropout": "dropout", "negatives": "n_negatives", "in_batch_negatives": "in_batch_negatives",
               "patience": "patience", "valid_fraction": "valid_fraction"},
}


def add_model_choice(parser: argparse.ArgumentParser, default_help: str) -> None:
    """``--model FAMILY``: which family to train (default None: decided by the command, see ``default_help``)."""
    parser.add_argument("--model", choices=MODEL_FAMILIES,
                        help="model family to train (blend: GRU4REC, SASRec and V-SKNN, weights fitted on the "
                             f"newest sessions); {default_help}")


def add_hyperparameters(parser: argparse.ArgumentParser) -> None:
    """The preset, a JSON config and one flag per hyperparameter (a flag of another family is an error)."""
    parser.add_argument("--config", help="JSON file of hyperparameters")
    parser.add_argument("--preset", choices=tuple(PRESET_FAMILY), default="default",
                        help="start from the family's tuned default or a reference setting: xe, bpr-max (gru4rec), "
                             "sasrec-bce (sasrec: the original BCE recipe); a preset of one family implies --model")
    parser.add_argument("--loss", choices=("cross-entropy", "bpr-max", "bce", "sampled-cross-entropy"),
                        help="gru4rec: cross-entropy, bpr-max; sasrec: cross-entropy, bce, sampled-cross-entropy")
    for flag, kind in (("--batch-size", int), ("--epochs", int), ("--learning-rate", float), ("--seed", int)):
        parser.add_argument(flag, type=kind)
    gru = parser.add_argument_group("gru4rec hyperparameters")
    gru.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 100 or 100,100")
    for flag, kind in (("--momentum", float), ("--dropout-embed", float), ("--dropout-hidden", float),
                       ("--n-sample", int), ("--sample-alpha", float), ("--bpreg", float), ("--elu-param", float),
                       ("--logq", float)):
        gru.add_argument(flag, type=kind)
    sas = parser.add_argument_group("sasrec hyperparameters")
    sas.add_argument("--max-len", type=int, help="items per window")
    sas.add_argument("--hidden", type=int, help="hidden size")
    sas.add_argument("--blocks", type=int, help="self-attention blocks")
    sas.add_argument("--heads", type=int, help="attention heads (must divide --hidden)")
    sas.add_argument("--dropout", type=float, help="dropout rate (embedding, attention, feed-forward)")
    sas.add_argument("--negatives", type=int, help="uniform negatives per batch (--loss sampled-cross-entropy)")
    sas.add_argument("--in-batch-negatives", action="store_true", default=None,
                     help="the batch's targets are negatives too (--loss sampled-cross-entropy)")
    sas.add_argument("--patience", type=int, help="early stopping: epochs without improvement")
    sas.add_argument("--valid-fraction", type=float,
                     help="early stopping: the newest sessions held out from training (0: none, train all epochs)")


# ------------------------------------------------------------------------------------------------ helpers


def load(path: str, args: argparse.Namespace) -> Any:
    """The click log at ``path`` in ``args.format``, cut into sessions by the session options."""
    from offline.loaders import load_events

    return load_events(path, args.format, session_gap_s=args.session_gap, min_rating=args.min_rating)


def model_family(args: argparse.Namespace, current: str | None = None) -> str:
    """The family to train: ``--model``, else the family of ``--preset``, else ``current`` (retrain: the current
    version's), else the family whose own hyperparameter flags are given, else ``DEFAULT_MODEL``."""
    flagged = [family for family, flags in FAMILY_FLAGS.items() if any(getattr(args, d) is not None for d in flags)]
    return (getattr(args, "model", None) or PRESET_FAMILY[args.preset] or current
            or (flagged[0] if flagged else DEFAULT_MODEL))


def params(args: argparse.Namespace, family: str | None = None) -> Any:
    """GRU4RecParams, SASRecParams or BlendParams (``family``, default ``model_family(args)``): the preset, then
    ``--config``, then the hyperparameter flags; a flag of another family is an error. A blend takes ``--config``
    (its fields: ``gru4rec``, ``sasrec``, ``gru4rec_weight``, ``runs_per_family``) and ``--seed`` only."""
    from offline.blend_params import BlendParams
    from offline.hyperparams import BPRMAX_REFERENCE, XE_REFERENCE, GRU4RecParams
    from offline.sasrec_params import BCE_RECIPE, SASRecParams

    family = family or model_family(args)
    for other, flags in FAMILY_FLAGS.items():
        given = [dest for dest in flags if getattr(args, dest) is not None]
        if other != family and given:
            raise CliError(f"--{given[0].replace('_', '-')} applies to {other}, not {family}")
    if PRESET_FAMILY[args.preset] not in (None, family):
        raise CliError(f"--preset {args.preset} is a {PRESET_FAMILY[args.preset]} setting, not {family}")
    if family == "blend":
        given = [dest for dest in SHARED_FLAGS if dest not in BLEND_FLAGS and getattr(args, dest) is not None]
        if given:
            raise CliError(f"--{given[0].replace('_', '-')} applies to one family: add --model gru4rec or sasrec "
                           f"(a blend's members take --config)")
    defaults = {"gru4rec": GRU4RecParams(), "sasrec": SASRecParams(), "blend": BlendParams()}
    references = {"xe": XE_REFERENCE, "bpr-max": BPRMAX_REFERENCE, "sasrec-bce": BCE_RECIPE}
    base = defaults[family] if args.preset == "default" else references[args.preset]
    values = base.model_dump()
    if args.config:
        try:
            values.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise CliError(f"cannot read config {args.config}: {error}") from None
    if family == "blend":
        if args.seed is not None:
            for member in ("gru4rec", "sasrec"):
                values[member] = {**dict(values[member]), "seed": args.seed}
        return BlendParams.model_validate(values)
    flags = {**SHARED_FLAGS, **FAMILY_FLAGS[family]}
    values.update({field: getattr(args, dest) for dest, field in flags.items() if getattr(args, dest) is not None})
    return type(base).model_validate(values)


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
