"""Retrain cycle on the YOOCHOOSE sample streamed through an embedded broker: step times, warm start vs scratch."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from offline.cleaning import SECONDS_PER_DAY  # noqa: E402
from offline.hyperparams import GRU4RecParams  # noqa: E402
from offline.loaders import load_events  # noqa: E402
from offline.retrain import RetrainReport, TopicSource, retrain_cycle  # noqa: E402
from stream_worker.broker import EmbeddedBroker, create_topics  # noqa: E402
from stream_worker.model_updates import kafka_publisher  # noqa: E402
from stream_worker.replay import click_messages, time_ordered  # noqa: E402
from stream_worker.topic_reader import ReadReport, click_window_reader  # noqa: E402

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k" / (
    "yoochoose-clicks-100k_train_full.txt")
STEPS = ("read", "prepare", "train", "gate", "publish", "retention", "total")


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, float]]) -> float:
    """Send (key, ClickEvent JSON, event time) messages, with the event time as the Kafka record timestamp."""
    from kafka import KafkaProducer

    started = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=5, batch_size=512 * 1024)
    for key, value, stamp in messages:
        producer.send(topic, key=key, value=value, timestamp_ms=int(stamp * 1000))
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def run_cycle(name: str, bootstrap: str, topic: str, models: Path, params: GRU4RecParams, args: argparse.Namespace,
              warm_start: bool, publish: bool) -> RetrainReport:
    report = retrain_cycle(
        TopicSource(topic, click_window_reader(bootstrap, progress=False)), models, params,
        window_days=args.window_days, gate_days=args.gate_days, margin=args.margin, warm_start=warm_start,
        progress=False,
        publish=kafka_publisher(bootstrap, "model-updates") if publish else None,
    )
    current, candidate, full = report.current_metrics, report.candidate_metrics, report.candidate_full_metrics
    print(f"{name:<22} {report.decision:<9} parent={report.parent_version or '-':<24} "
          f"train {report.train_events} ev / gate {report.gate_events} ev, items {report.n_items} "
          f"(+{report.items_added}/-{report.items_dropped})")
    print(f"{'':<22} gate, {int(full['n_predictions'])} predictions: candidate mrr@20={full['mrr@20']:.4f} "
          f"recall@20={full['recall@20']:.4f}"
          + (f"; the {int(candidate['n_predictions'])} both can make: candidate mrr@20={candidate['mrr@20']:.4f} "
             f"recall@20={candidate['recall@20']:.4f}, current mrr@20={current['mrr@20']:.4f} "
             f"recall@20={current['recall@20']:.4f}" if current else ""))
    print(f"{'':<22} steps: " + ", ".join(f"{s} {report.timings[s]:.2f} s" for s in STEPS))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, default=DEFAULT_FILE, help="session-tsv click log (train_full)")
    parser.add_argument("--initial-days", type=int, default=5, help="days streamed before the first cycle")
    parser.add_argument("--window-days", type=float, default=7.0)
    parser.add_argument("--gate-days", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every cycle (default: the tuned 10)")
    parser.add_argument("--warm-epochs", type=int, default=3, help="epochs of the extra short warm-start run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    frame = load_events(args.input, "session-tsv")
    day = ((frame["timestamp"] - frame["timestamp"].min()) // SECONDS_PER_DAY).astype(int)
    n_days = int(day.max()) + 1
    if not 1 <= args.initial_days < n_days:
        parser.error(f"--initial-days must be in 1..{n_days - 1}")
    params = GRU4RecParams(n_epochs=args.epochs)
    print(f"{args.input.name}: {len(frame)} events over {n_days} days; GRU4REC defaults, {args.epochs} epochs; "
          f"window {args.window_days:g} days, gate {args.gate_days:g} day(s), margin {args.margin:g}")
    ordered = time_ordered(frame)  # event ids numbered over the whole log, so a split never repeats one
    messages = list(click_messages(ordered))
    cutoff = frame["timestamp"].min() + args.initial_days * SECONDS_PER_DAY
    first = [m for m in messages if m[2] < cutoff]
    with tempfile.TemporaryDirectory() as work, EmbeddedBroker() as broker:
        topic = "clicks"
        create_topics(broker.bootstrap, {topic: 4})
        seconds = produce(broker.bootstrap, topic, first)
        print(f"produced days 1..{args.initial_days} ({len(first)} events) in {seconds:.1f} s")
        warm_dir, scratch_dir, short_dir = (Path(work) / name for name in ("warm", "scratch", "short"))
        run_cycle("bootstrap (scratch)", broker.bootstrap, topic, warm_dir, params, args, False, True)
        shutil.copytree(warm_dir, scratch_dir, symlinks=True)
        shutil.copytree(warm_dir, short_dir, symlinks=True)
        rest = [m for m in messages if m[2] >= cutoff]
        seconds = produce(broker.bootstrap, topic, rest)
        print(f"produced days {args.initial_days + 1}..{n_days} ({len(rest)} events) in {seconds:.1f} s")

        warm = run_cycle("cycle: warm start", broker.bootstrap, topic, warm_dir, params, args, True, True)
        assert isinstance(warm.read, ReadReport)  # what click_window_reader reports
        print(f"{'':<22} read: {warm.read.records_read} records, {warm.read.valid} in the window, "
              f"{warm.read.seconds:.2f} s; time index: {warm.read.time_index.split(' (')[0]}")
        scratch = run_cycle("cycle: from scratch", broker.bootstrap, topic, scratch_dir, params, args, False, False)
        short_params = params.model_copy(update={"n_epochs": args.warm_epochs})
        short = run_cycle(f"cycle: warm, {args.warm_epochs} epochs", broker.bootstrap, topic, short_dir,
                          short_params, args, True, False)

    print()
    print("whole gate set (the same events for all three: the last day's sessions, items of the training days)")
    print(f"{'candidate':<22}{'mrr@20':>9}{'recall@20':>11}{'train s':>9}{'cycle s':>9}")
    rows = {"warm start": warm, "from scratch": scratch, f"warm, {args.warm_epochs} epochs": short}
    for name, report in rows.items():
        full = report.candidate_full_metrics
        print(f"{name:<22}{full['mrr@20']:>9.4f}{full['recall@20']:>11.4f}"
              f"{report.timings['train']:>9.1f}{report.timings['total']:>9.1f}")
    for name, report in (("warm", warm), (f"warm {args.warm_epochs} ep", short)):
        full, base = report.candidate_full_metrics, scratch.candidate_full_metrics
        print(f"{name}/scratch: mrr@20 {full['mrr@20'] / base['mrr@20']:.3f}, recall@20 "
              f"{full['recall@20'] / base['recall@20']:.3f}, train time "
              f"{report.timings['train'] / scratch.timings['train']:.2f}")

if __name__ == "__main__":
    main()
