"""The demo command: the whole product on the bundled sample (the run itself is streamrec.demo)."""

from __future__ import annotations

import argparse
from typing import Any

from streamrec.cli.common import add_hyperparameters, params, positive_float, quiet_kafka


def cmd_demo(args: argparse.Namespace) -> None:
    from streamrec.demo import run_demo

    quiet_kafka(args)
    run_demo(params(args), rate=args.rate, progress=args.progress)


def add_parsers(commands: Any) -> None:
    """demo."""
    demo = commands.add_parser("demo", help="the whole product on the bundled YOOCHOOSE sample: embedded broker, "
                                           "training if no model, worker, replay of the last day, live summary")
    demo.add_argument("--rate", type=positive_float, default=None, help="replay at most this many clicks/s")
    add_hyperparameters(demo)
    demo.set_defaults(func=cmd_demo)
