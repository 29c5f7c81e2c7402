"""End-to-end streaming benchmark on the embedded broker: sustained events/s of the worker against a
pass-through Faust agent (same batching and producer path, no model/table), and event->prediction latency
at several offered rates."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from _support import ROOT, given_or_trained

from stream_worker.broker import EmbeddedBroker, free_port
from stream_worker.progress import PROGRESS_KEY
from stream_worker.replay import produce_raw
from tests.support.workloads import Message, workload


def read_records(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[Any]:
    """All records of ``topic`` (with their CreateTime timestamps) once ``expected`` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None,
                             fetch_max_wait_ms=100, max_poll_records=5000)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                return records
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
    finally:
        consumer.close()
    return records


class App:
    """A worker or pass-through subprocess on its own topics."""

    def __init__(self, kind: str, bootstrap: str, models_dir: Path, work: Path, prefix: str) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.env = {**os.environ, "STREAMREC_BOOTSTRAP_SERVERS": bootstrap, "STREAMREC_MODELS_DIR": str(models_dir),
                    "STREAMREC_DATA_DIR": str(work / prefix), "STREAMREC_WEB_PORT": str(self.port),
                    "STREAMREC_APP_ID": prefix, "STREAMREC_CLICKS_TOPIC": f"{prefix}-clicks",
                    "STREAMREC_PREDICTIONS_TOPIC": f"{prefix}-out", "STREAMREC_DEAD_LETTER_TOPIC": f"{prefix}-dlq",
                    "STREAMREC_MODEL_UPDATES_TOPIC": f"{prefix}-updates", "STREAMREC_LOG_LEVEL": "WARNING"}
        command = ([sys.executable, "-m", "streamrec.cli", "worker"] if kind == "worker"
                   else [sys.executable, str(ROOT / "bench" / "passthrough_agent.py")])
        self.log = open(work / f"{prefix}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{kind} exited; see {work / prefix}.log") from None
                time.sleep(0.5)
        raise TimeoutError(f"{kind} did not start")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=2) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def sustained(kind: str, broker: EmbeddedBroker, models_dir: Path, work: Path,
              messages: list[Message]) -> tuple[float, dict[str, Any]]:
    """Events/s over a backlog produced before the app starts (output CreateTime span), and the app's /stats."""
    prefix = f"{kind}-max-{time.monotonic_ns()}"
    produce_raw(broker.bootstrap, f"{prefix}-clicks", messages)
    app = App(kind, broker.bootstrap, models_dir, work, prefix)
    try:
        records = read_records(broker.bootstrap, f"{prefix}-out", len(messages), timeout_s=600)
        stats = app.stats()
    finally:
        app.stop()
    if len(records) < len(messages):
        raise RuntimeError(f"{kind}: only {len(records)} of {len(messages)} outputs")
    stamps = np.array([r.timestamp for r in records], dtype=np.float64) / 1000.0
    return len(records) / max(stamps.max() - stamps.min(), 1e-9), stats


def latencies(broker: EmbeddedBroker, models_dir: Path, work: Path, messages: list[Message], rates: list[float],
              seconds: float) -> tuple[dict[float, tuple[float, float]], float]:
    """p50/p99 click->prediction latency (ms, CreateTime to CreateTime) at each offered rate; bytes/session."""
    from kafka import KafkaProducer

    prefix = f"worker-lat-{time.monotonic_ns()}"
    app = App("worker", broker.bootstrap, models_dir, work, prefix)
    results: dict[float, tuple[float, float]] = {}
    sent = 0
    measured: set[tuple[int, int]] = set()
    try:
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], acks=1, linger_ms=0)
        # Warm-up (not measured): group join, partition assignment, first batches.
        warm_up = 500
        for key, value in messages[:warm_up]:
            producer.send(f"{prefix}-clicks", key=key, value=value)
        producer.flush()
        sent = warm_up
        for record in read_records(broker.bootstrap, f"{prefix}-out", sent, timeout_s=120):
            prediction = json.loads(record.value)
            measured.add((prediction["partition"], prediction["offset"]))
        for rate in rates:
            n = min(int(rate * seconds), len(messages) - sent)
            started = time.monotonic()
            for i, (key, value) in enumerate(messages[sent : sent + n]):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.send(f"{prefix}-clicks", key=key, value=value)
            producer.flush()
            sent += n
            outputs = read_records(broker.bootstrap, f"{prefix}-out", sent, timeout_s=120)
            inputs = read_records(broker.bootstrap, f"{prefix}-clicks", sent, timeout_s=60)
            sent_at = {(r.partition, r.offset): r.timestamp for r in inputs}
            lat = []
            for record in outputs:
                prediction = json.loads(record.value)
                source = (prediction["partition"], prediction["offset"])
                if source in sent_at and source not in measured:
                    measured.add(source)
                    lat.append(record.timestamp - sent_at[source])
            results[rate] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
        producer.close()
        changelog = read_records(broker.bootstrap, f"{prefix}-sessions-changelog", 1, timeout_s=30)
        changelog += read_records(broker.bootstrap, f"{prefix}-sessions-changelog", 10**9, timeout_s=5)
        last = {r.key: len(r.value) for r in changelog if r.value is not None and r.key != PROGRESS_KEY}
        bytes_per_session = statistics.fmean(last.values()) if last else 0.0
    finally:
        app.stop()
    return results, bytes_per_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=60_000, help="backlog size for the sustained runs")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="duration of each offered-rate run")
    parser.add_argument("--models-dir", type=Path, help="serve this model (default: train one on train_tr)")
    args = parser.parse_args()
    messages = workload(args.events)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        models_dir = given_or_trained(args.models_dir, work)
        passthrough, _ = sustained("passthrough", broker, models_dir, work, messages)
        worker, worker_stats = sustained("worker", broker, models_dir, work, messages)
        rates = [round(worker * f, -1) for f in (0.25, 0.5)]
        lat, bytes_per_session = latencies(broker, models_dir, work, messages, rates, args.latency_seconds)
    print(f"sustained over a {args.events}-event backlog (2,873-item model, top-20, 4 partitions):")
    print(f"  pass-through agent: {passthrough:8.0f} events/s")
    print(f"  worker:             {worker:8.0f} events/s   ratio {worker / passthrough:.2f}")
    for rate, (p50, p99) in lat.items():
        print(f"  offered {rate:6.0f} ev/s ({rate / worker:.0%} of max): p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
    print(f"  bytes per session (changelog value): {bytes_per_session:.0f}")
    busy = worker_stats["busy_seconds"]
    wall = args.events / worker
    print(f"  worker batches: {worker_stats['batches']} (mean {args.events / worker_stats['batches']:.0f} clicks); "
          f"time in batch handling {busy:.1f} s of {wall:.1f} s wall:")
    for stage, seconds in worker_stats["seconds_by_stage"].items():
        print(f"    {stage:<12} {seconds:6.2f} s  {seconds / args.events * 1e6:6.1f} us/click  {seconds / wall:5.1%}")
    half = lat[rates[1]]
    print(f"events_per_s={worker:.0f} passthrough_events_per_s={passthrough:.0f} ratio={worker / passthrough:.2f} "
          f"p50_ms={half[0]:.1f} p99_ms={half[1]:.1f} bytes_per_session={bytes_per_session:.0f}")


if __name__ == "__main__":
    main()
