"""Streaming commands: broker, replay, tail, worker."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from streamrec.cli.common import (
    CliError,
    add_bootstrap,
    add_format,
    count,
    duration,
    load,
    port,
    positive_float,
    quiet_kafka,
    signal_handlers,
    worker_settings,
)


def cmd_broker(args: argparse.Namespace) -> None:
    from stream_worker.broker import BrokerError, EmbeddedBroker

    quiet_kafka(args)
    broker = EmbeddedBroker(port=args.port or None, log_path=Path(args.log) if args.log else None)
    stop = threading.Event()
    with signal_handlers(lambda signum, frame: stop.set()):
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
    print(f"broker stopped (exit code {code})", flush=True)


def cmd_replay(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError

    from stream_worker.replay import ReplayError, replay_events

    quiet_kafka(args)
    settings = worker_settings(args)
    topic = args.topic or settings.clicks_topic
    frame = load(args.input, args)
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

    quiet_kafka(args)
    settings = worker_settings(args)
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

    quiet_kafka(args)
    settings = worker_settings(args)
    if args.models_dir:
        settings = settings.model_copy(update={"models_dir": Path(args.models_dir)})
    run_worker(settings, log_level=args.log_level.lower())


def add_parsers(commands: Any) -> None:
    """broker, replay, tail, worker."""
    broker = commands.add_parser("broker", help="run an embedded tansu Kafka broker (memory storage) until Ctrl-C")
    broker.add_argument("--port", type=port, default=9092, help="port on localhost; 0 = any free port (default 9092)")
    broker.add_argument("--log", metavar="FILE", help="append the broker's own output to FILE")
    broker.set_defaults(func=cmd_broker)

    replay = commands.add_parser("replay", help="produce a click log to Kafka as ClickEvent JSON in time order")
    replay.add_argument("input", metavar="FILE", help="click log to replay")
    add_format(replay)
    add_bootstrap(replay)
    replay.add_argument("--topic", help="target topic (default: env STREAMREC_CLICKS_TOPIC or 'clicks')")
    replay.add_argument("--rate", type=positive_float, metavar="N", help="at most N events per second")
    replay.add_argument("--speedup", type=positive_float, metavar="X",
                        help="keep the original gaps between events, divided by X (3600: an hour per second)")
    replay.add_argument("--limit", type=count, metavar="N", help="replay only the first N events (in time order)")
    replay.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="hide the progress bar")
    replay.set_defaults(func=cmd_replay)

    tail = commands.add_parser("tail", help="print the messages of a topic, one JSON value per line")
    tail.add_argument("topic", metavar="TOPIC")
    add_bootstrap(tail)
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the end")
    tail.add_argument("--limit", type=count, metavar="N", help="stop after N messages")
    tail.add_argument("--timeout", type=duration, metavar="S",
                      help="stop after S seconds without messages (default: follow until Ctrl-C)")
    tail.set_defaults(func=cmd_tail)

    worker = commands.add_parser("worker", help="run the Faust worker: clicks -> session state -> predictions")
    add_bootstrap(worker)
    worker.add_argument("--models-dir", help="models directory to serve current from (env STREAMREC_MODELS_DIR)")
    worker.set_defaults(func=cmd_worker)
