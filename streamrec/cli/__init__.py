"""The ``streamrec`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from offline.settings import OfflineSettings
from streamrec.cli import demo as demo_commands
from streamrec.cli import offline as offline_commands
from streamrec.cli import retrain as retrain_commands
from streamrec.cli import streaming as streaming_commands
from streamrec.cli.common import EXIT_USAGE, CliError, Parser, one_line

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> Parser:
    """The ``streamrec`` parser: global flags, then one subcommand per job (offline, demo, streaming, retraining)."""
    settings = OfflineSettings()
    parser = Parser(prog="streamrec", description=__doc__)
    parser.add_argument("--log-level", default=settings.log_level, help="logging level (env STREAMREC_LOG_LEVEL)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=settings.progress,
                        help="hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    offline_commands.add_parsers(commands, settings)
    demo_commands.add_parsers(commands)
    streaming_commands.add_parsers(commands)
    retrain_commands.add_parsers(commands, settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``streamrec`` command; returns the exit code (2: one-line error on stderr, 130: interrupted)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (CliError, ValueError, OSError, ValidationError) as error:
        # DataFormatError and ArtifactError are ValueErrors; nothing was published when they are raised.
        print(f"streamrec {args.command}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"streamrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
