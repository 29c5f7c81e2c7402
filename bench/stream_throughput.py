"""End-to-end streaming benchmark on the embedded broker: sustained events/s of the worker against a
pass-through Faust agent (same delivery and producer path, no model/table) and a raw aiokafka pass-through (no
Faust: the ceiling), event->prediction latency at several offered rates, and where each click's time goes (the
worker's latency histograms: CreateTime -> fetched -> batch started -> modelled -> acknowledged -> stored). Then the
worker again with other models: a 40,000-item GRU4REC (the full RSC15 catalogue's size; exact top-k) and the served
default blend (GRU4REC + SASRec + V-SKNN), each sustained and at half its own rate."""

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
from stream_worker.stats import LATENCY_STAGES, histogram_quantile
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

    def __init__(self, kind: str, bootstrap: str, models_dir: Path, work: Path, prefix: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.env = {**os.environ, "STREAMREC_BOOTSTRAP_SERVERS": bootstrap, "STREAMREC_MODELS_DIR": str(models_dir),
                    "STREAMREC_DATA_DIR": str(work / prefix), "STREAMREC_WEB_PORT": str(self.port),
                    "STREAMREC_APP_ID": prefix, "STREAMREC_CLICKS_TOPIC": f"{prefix}-clicks",
                    "STREAMREC_PREDICTIONS_TOPIC": f"{prefix}-out", "STREAMREC_DEAD_LETTER_TOPIC": f"{prefix}-dlq",
                    "STREAMREC_MODEL_UPDATES_TOPIC": f"{prefix}-updates", "STREAMREC_LOG_LEVEL": "WARNING",
                    **(env or {})}
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


def sustained(kind: str, broker: EmbeddedBroker, models_dir: Path, work: Path, messages: list[Message],
              env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """Events/s over a backlog produced before the app starts (output CreateTime span), and the app's /stats."""
    prefix = f"{kind}-max-{time.monotonic_ns()}"
    produce_raw(broker.bootstrap, f"{prefix}-clicks", messages)
    if kind == "raw":
        return sustained_raw(broker, work, prefix, len(messages)), {}
    app = App(kind, broker.bootstrap, models_dir, work, prefix, env)
    try:
        records = read_records(broker.bootstrap, f"{prefix}-out", len(messages), timeout_s=600)
        stats = app.stats()
    finally:
        app.stop()
    return output_rate(kind, records, len(messages)), stats


def sustained_raw(broker: EmbeddedBroker, work: Path, prefix: str, expected: int) -> float:
    """The same for bench/raw_passthrough.py (aiokafka only), which exits once it forwarded everything."""
    env = {**os.environ, "STREAMREC_BOOTSTRAP_SERVERS": broker.bootstrap}
    with open(work / f"{prefix}.log", "wb") as log:
        subprocess.run([sys.executable, str(ROOT / "bench" / "raw_passthrough.py"), "--source", f"{prefix}-clicks",
                        "--destination", f"{prefix}-out", "--expected", str(expected)],
                       env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=True, timeout=600)
    return output_rate("raw", read_records(broker.bootstrap, f"{prefix}-out", expected, timeout_s=120), expected)


def output_rate(kind: str, records: list[Any], expected: int) -> float:
    if len(records) < expected:
        raise RuntimeError(f"{kind}: only {len(records)} of {expected} outputs")
    stamps = np.array([r.timestamp for r in records], dtype=np.float64) / 1000.0
    return len(records) / max(stamps.max() - stamps.min(), 1e-9)


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process so far; 0 where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_percentiles(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """(p50, p99, mean) ms from CreateTime to each stage, over the clicks handled between two /stats snapshots."""
    bounds = after["latency_buckets_s"]
    result = {}
    for stage in LATENCY_STAGES:
        counts = np.subtract(after["latency"][stage]["buckets"], before["latency"][stage]["buckets"])
        total = after["latency"][stage]["sum_s"] - before["latency"][stage]["sum_s"]
        n = max(int(counts.sum()), 1)
        result[stage] = (histogram_quantile(0.5, counts, bounds) * 1e3, histogram_quantile(0.99, counts, bounds) * 1e3,
                         total / n * 1e3)
    return result


def offer(bootstrap: str, topic: str, messages: list[Message], rate: float, tick_s: float = 0.005) -> None:
    """Produce ``messages`` at ``rate`` per second. Every ``tick_s`` what is due goes out as one closed record
    batch per partition (aiokafka, keyed by Kafka's default partitioner), each record with its scheduled time as
    CreateTime, so the pacing delay (< tick_s) counts in the latency. tansu spends about a millisecond of CPU per
    produce request, and it shares the 2 cores with the worker: a request per record or per 2 ms (kafka-python
    with linger 0, as this bench did before) took more CPU from the worker than its own clicks."""
    import asyncio

    import aiokafka

    async def run() -> None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
        await producer.start()
        try:
            partitions = sorted(await producer.partitions_for(topic))
            deliveries = []
            started_ms = time.time() * 1000.0
            started = time.monotonic()
            done = 0
            while done < len(messages):
                due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
                by_partition: dict[int, list[tuple[int, Message]]] = {}
                for i in range(done, due):
                    key = messages[i][0]
                    by_partition.setdefault(producer._partitioner(key, partitions, partitions), []).append(
                        (int(started_ms + i / rate * 1000.0), messages[i]))
                for partition, records in by_partition.items():
                    batch = producer.create_batch()
                    for stamp, (key, value) in records:
                        if batch.append(key=key, value=value, timestamp=stamp) is None:
                            batch.close()
                            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                            batch = producer.create_batch()
                            batch.append(key=key, value=value, timestamp=stamp)
                    batch.close()
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                done = max(done, due)
                await asyncio.sleep(max(started + done / rate - time.monotonic(), tick_s))
            await asyncio.gather(*deliveries)
        finally:
            await producer.stop()

    asyncio.run(run())


def latencies(broker: EmbeddedBroker, models_dir: Path, work: Path, messages: list[Message], rates: list[float],
              seconds: float, env: dict[str, str] | None = None) -> tuple[dict[float, tuple[float, float]], float,
                                       dict[float, dict[str, tuple[float, float, float]]], dict[float, str]]:
    """p50/p99 click->prediction latency (ms, CreateTime to CreateTime) at each offered rate; bytes/session; the
    worker's own p50/p99/mean per stage at each rate; the CPU the worker and the broker used while it was offered.

    Each rate gets a fresh worker on fresh topics: tansu's memory storage spends CPU on a fetch in proportion to
    the partition's length (a consumer following the end of a 4-partition topic written at 2,400 records/s cost
    it 33 % of a core on a fresh topic, 70 % once the topic held 70k records, 94 % at 140k), so rates measured
    one after the other on one topic would each pay for the ones before."""
    results: dict[float, tuple[float, float]] = {}
    stages: dict[float, dict[str, tuple[float, float, float]]] = {}
    cpu: dict[float, str] = {}
    bytes_per_session = 0.0
    for rate in rates:
        prefix = f"worker-lat-{time.monotonic_ns()}"
        app = App("worker", broker.bootstrap, models_dir, work, prefix, env)
        try:
            # Warm-up (not measured): group join, partition assignment, first batches.
            warm_up = 500
            offer(broker.bootstrap, f"{prefix}-clicks", messages[:warm_up], 5000.0)
            measured: set[tuple[int, int]] = set()
            for record in read_records(broker.bootstrap, f"{prefix}-out", warm_up, timeout_s=120):
                prediction = json.loads(record.value)
                measured.add((prediction["partition"], prediction["offset"]))
            time.sleep(3.0)  # (start-up work settles: first commits, timers, the start-up heap's last collection)
            before = app.stats()
            n = min(int(rate * seconds), len(messages) - warm_up)
            started, worker_cpu, broker_cpu = time.monotonic(), cpu_seconds(app.process.pid), cpu_seconds(broker.pid)
            offer(broker.bootstrap, f"{prefix}-clicks", messages[warm_up : warm_up + n], rate)
            wall = time.monotonic() - started
            cpu[rate] = (f"worker {(cpu_seconds(app.process.pid) - worker_cpu) / wall:.0%}, broker "
                         f"{(cpu_seconds(broker.pid) - broker_cpu) / wall:.0%} of a core")
            outputs = read_records(broker.bootstrap, f"{prefix}-out", warm_up + n, timeout_s=120)
            inputs = read_records(broker.bootstrap, f"{prefix}-clicks", warm_up + n, timeout_s=60)
            sent_at = {(r.partition, r.offset): r.timestamp for r in inputs}
            lat = []
            for record in outputs:
                prediction = json.loads(record.value)
                source = (prediction["partition"], prediction["offset"])
                if source in sent_at and source not in measured:
                    measured.add(source)
                    lat.append(record.timestamp - sent_at[source])
            results[rate] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
            stages[rate] = stage_percentiles(before, app.stats())
            changelog = read_records(broker.bootstrap, f"{prefix}-sessions-changelog", 10**9, timeout_s=5)
            last = {r.key: len(r.value) for r in changelog if r.value is not None and r.key != PROGRESS_KEY}
            bytes_per_session = statistics.fmean(last.values()) if last else 0.0
        finally:
            app.stop()
    return results, bytes_per_session, stages, cpu


def large_catalogue(models_dir: Path, n_items: int = 40_000) -> Path:
    """A random GRU4REC over ``n_items`` items: the workload's items (train_tr's) first, then synthetic ones."""
    from modelkit.item_index import ItemIndex
    from offline.loaders import load_events
    from tests.support.artifacts import random_artifact
    from tests.support.workloads import RSC15_DIR

    known = ItemIndex.from_events(load_events(RSC15_DIR / "yoochoose-clicks-100k_train_tr.txt",
                                              "session-tsv")["item_id"]).ids.tolist()
    items = known + [f"synthetic-{n}" for n in range(n_items - len(known))]
    random_artifact(models_dir, "bench-40k", items=items, layers=(100,), noise=0.05)
    return models_dir


def default_blend(models_dir: Path) -> Path:
    """The served default blend's shape over train_tr's items (random neural weights, V-SKNN's real index)."""
    from tests.support.artifacts import random_rsc15_blend_artifact

    random_rsc15_blend_artifact(models_dir, "bench-blend")
    return models_dir


def other_model(broker: EmbeddedBroker, models_dir: Path, work: Path, messages: list[Message], seconds: float
                ) -> tuple[float, tuple[float, float], dict[str, tuple[float, float, float]]]:
    """The worker serving ``models_dir``: sustained events/s, p50/p99 at half of it, its per-stage figures there."""
    rate, _ = sustained("worker", broker, models_dir, work, messages)
    half = round(rate / 2, -1)
    lat, _, stages, _ = latencies(broker, models_dir, work, messages, [half], seconds)
    return rate, lat[half], stages[half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=60_000, help="backlog size for the sustained runs")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="duration of each offered-rate run")
    parser.add_argument("--models-dir", type=Path, help="serve this model (default: train one on train_tr)")
    parser.add_argument("--no-other-models", action="store_true",
                        help="skip the 40,000-item GRU4REC and the default blend")
    parser.add_argument("--old-path", action="store_true",
                        help="also measure the worker and the pass-through on Faust's per-event path "
                             "(STREAMREC_BATCH_DELIVERY=false), in the same run")
    args = parser.parse_args()
    messages = workload(args.events)
    old_env = {"STREAMREC_BATCH_DELIVERY": "false"}
    started_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        models_dir = given_or_trained(args.models_dir, work)
        raw, _ = sustained("raw", broker, models_dir, work, messages)
        passthrough, _ = sustained("passthrough", broker, models_dir, work, messages)
        worker, worker_stats = sustained("worker", broker, models_dir, work, messages)
        if args.old_path:
            old_passthrough, _ = sustained("passthrough", broker, models_dir, work, messages, old_env)
            old_worker, _ = sustained("worker", broker, models_dir, work, messages, old_env)
        rates = [round(worker * f, -1) for f in (0.1, 0.25, 0.5)]
        lat, bytes_per_session, stages, cpu = latencies(broker, models_dir, work, messages, rates,
                                                        args.latency_seconds)
        others = {} if args.no_other_models else {
            name: other_model(broker, directory, work, messages, args.latency_seconds)
            for name, directory in (("40k", large_catalogue(work / "large")), ("blend", default_blend(work / "blend")))}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {started_load} at the start, {load} at the end")
    print(f"sustained over a {args.events}-event backlog (2,873-item model, top-20, 4 partitions):")
    print(f"  raw aiokafka pass-through: {raw:8.0f} events/s")
    print(f"  pass-through agent:        {passthrough:8.0f} events/s")
    print(f"  worker:                    {worker:8.0f} events/s   ratio {worker / passthrough:.2f} to the "
          f"pass-through, {worker / raw:.2f} to raw aiokafka")
    if args.old_path:
        print(f"  Faust's per-event path: pass-through {old_passthrough:8.0f} events/s, worker {old_worker:8.0f} "
              f"events/s (ratio {old_worker / old_passthrough:.2f}); batch path / per-event path: worker "
              f"{worker / old_worker:.2f}x, pass-through {passthrough / old_passthrough:.2f}x")
    for rate, (p50, p99) in lat.items():
        print(f"  offered {rate:6.0f} ev/s ({rate / worker:.0%} of max): p50 {p50:6.1f} ms  p99 {p99:6.1f} ms "
              f"(click CreateTime -> prediction CreateTime); CPU: {cpu[rate]}")
        print("    worker, ms from CreateTime (p50 / p99 / mean): " + ",  ".join(
            f"{stage} {a:.1f} / {b:.1f} / {c:.1f}" for stage, (a, b, c) in stages[rate].items()))
    print(f"  bytes per session (changelog value): {bytes_per_session:.0f}")
    busy = worker_stats["busy_seconds"]
    wall = args.events / worker
    median = histogram_quantile(0.5, worker_stats["batch_sizes"], worker_stats["batch_size_buckets"])
    print(f"  worker batches: {worker_stats['batches']} (mean {args.events / worker_stats['batches']:.0f} clicks, "
          f"median ~{median:.0f}); time in batch handling {busy:.1f} s of {wall:.1f} s wall (ack_wait overlaps "
          "the next batch):")
    for stage, seconds in worker_stats["seconds_by_stage"].items():
        print(f"    {stage:<12} {seconds:6.2f} s  {seconds / args.events * 1e6:6.1f} us/click  {seconds / wall:5.1%}")
    for name, (rate, (p50, p99), stage_figures) in others.items():
        what = "40,000-item GRU4REC" if name == "40k" else "default blend (GRU4REC + SASRec + V-SKNN, 2,873 items)"
        modelled = stage_figures["modelled"]
        print(f"  worker, {what}: {rate:8.0f} events/s ({rate / worker:.2f}x the 2,873-item GRU4REC); at half of it "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (prediction computed: p50 {modelled[0]:.1f}, p99 {modelled[1]:.1f})")
    extra = "".join(f" events_per_s_{name}={rate:.0f} p50_ms_{name}={p50:.1f} p99_ms_{name}={p99:.1f}"
                    for name, (rate, (p50, p99), _) in others.items())
    low, half = lat[rates[0]], lat[rates[-1]]
    old = (f" old_events_per_s={old_worker:.0f} old_passthrough_events_per_s={old_passthrough:.0f}"
           if args.old_path else "")
    print(f"events_per_s={worker:.0f} passthrough_events_per_s={passthrough:.0f} ratio={worker / passthrough:.2f} "
          f"p50_ms={half[0]:.1f} p99_ms={half[1]:.1f} bytes_per_session={bytes_per_session:.0f} "
          f"raw_events_per_s={raw:.0f} raw_ratio={worker / raw:.2f} p50_10pct_ms={low[0]:.1f} "
          f"p99_10pct_ms={low[1]:.1f}{old}{extra}")


if __name__ == "__main__":
    main()
