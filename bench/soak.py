"""Soak: a million generated clicks through one worker with an event-time session TTL, sampling the worker's RSS
and RocksDB size every few seconds; both must stay flat after warm-up. Writes docs/soak.png and a JSON summary."""

from __future__ import annotations

import argparse
import heapq
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _support import ROOT

from stream_worker.broker import EmbeddedBroker, create_topics
from tests.support.artifacts import random_artifact
from tests.support.streaming import WorkerProcess, du_bytes, rss_kib
from tests.support.workloads import Message


def synthetic_model(models_dir: Path, n_items: int, hidden: int, seed: int = 0) -> None:
    """A GRU4REC artifact with random weights (resources, not quality, are measured here)."""
    popularity = np.sort(np.random.default_rng(seed).zipf(1.5, n_items).astype(np.int64) % 10_000)[::-1].copy()
    random_artifact(models_dir, "soak-v1", items=n_items, layers=(hidden,), seed=seed, noise=0.3,
                    popularity=popularity)


def generated_clicks(n_events: int, events_per_s: float, n_items: int, seed: int = 0,
                     start: float = 1_700_000_000.0) -> Iterator[Message]:
    """Clicks of overlapping sessions in event-time order: sessions start as a Poisson process, have 1-12
    clicks 5-120 s apart; items Zipf-distributed, 5 % unknown to the model."""
    rng = np.random.default_rng(seed)
    mean_length = 6.5
    session_rate = events_per_s / mean_length
    heap: list[tuple[float, int, int]] = []  # (next click time, session, clicks left)
    clock = start
    next_session = 0
    emitted = 0
    positions: dict[int, int] = {}
    while emitted < n_events:
        arrival = clock + rng.exponential(1.0 / session_rate)
        while heap and heap[0][0] <= arrival and emitted < n_events:
            stamp, session, left = heapq.heappop(heap)
            position = positions.pop(session, 0)
            item = f"u{rng.integers(10**6)}" if rng.random() < 0.05 else f"i{min(rng.zipf(1.3) - 1, n_items - 1)}"
            sid = f"soak-{session}"
            value = (f'{{"session_id":"{sid}","item_id":"{item}","timestamp":{stamp:.3f},'
                     f'"event_id":"{sid}:{position}"}}')
            yield sid.encode(), value.encode()
            emitted += 1
            if left > 1:
                positions[session] = position + 1
                heapq.heappush(heap, (stamp + float(rng.uniform(5, 120)), session, left - 1))
        clock = arrival
        heapq.heappush(heap, (clock, next_session, int(rng.integers(1, 13))))
        next_session += 1


class Producer(threading.Thread):
    """Sends the generated clicks as fast as the broker takes them (kafka-python, acks=1)."""

    def __init__(self, bootstrap: str, topic: str, messages: Iterator[Message]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages = bootstrap, topic, messages
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=[self.bootstrap], acks=1, linger_ms=20, batch_size=256 * 1024)
        try:
            for key, value in self.messages:
                producer.send(self.topic, key=key, value=value)
                self.sent += 1
            producer.flush()
        except BaseException as error:  # reported by the caller
            self.error = error
        finally:
            producer.close(timeout=5)


def plot(samples: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [s["events"] / 1e6 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(events, [s["worker_rss_mb"] for s in samples], label="worker RSS")
    axes[0].set_ylabel("MiB")
    axes[0].legend(loc="lower right")
    axes[1].plot(events, [s["rocksdb_mb"] for s in samples], color="tab:orange", label="RocksDB data dir (du)")
    axes[1].set_ylabel("MiB")
    axes[1].legend(loc="lower right")
    axes[2].plot(events, [s["expired"] / 1000 for s in samples], color="tab:green", label="sessions expired (TTL)")
    axes[2].plot(events, [s["sessions"] / 1000 for s in samples], color="tab:gray", linestyle="--",
                 label="keys held (RocksDB estimate-num-keys)")
    axes[2].set_ylabel("thousands")
    axes[2].set_xlabel("clicks processed (millions)")
    axes[2].legend(loc="lower right")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Flatness: values at 50 % of the run vs the maximum over the second half."""
    total = samples[-1]["events"]
    second_half = [s for s in samples if s["events"] >= total / 2]
    at_half = second_half[0]
    result: dict[str, Any] = {"samples": len(samples), "events": int(total)}
    for name in ("worker_rss_mb", "rocksdb_mb", "sessions", "broker_rss_mb"):
        values = [s[name] for s in second_half]
        result[name] = {"at_50pct": round(at_half[name], 1), "max_2nd_half": round(max(values), 1),
                        "end": round(samples[-1][name], 1), "max": round(max(s[name] for s in samples), 1),
                        "growth_2nd_half_pct": round(100 * (max(values) / max(at_half[name], 1e-9) - 1), 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--events-per-s", type=float, default=50.0, help="event-time density of the stream")
    parser.add_argument("--ttl-s", type=float, default=3600.0, help="STREAMREC_SESSION_TTL_S (event time)")
    parser.add_argument("--expiry-interval-s", type=float, default=5.0)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sample-s", type=float, default=3.0)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "soak.png")
    parser.add_argument("--json", type=Path, help="also write samples and summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        work = Path(tmp)
        synthetic_model(work / "models", args.items, args.hidden)
        prefix = f"soak-{os.getpid()}"
        data_dir = work / "rocksdb"
        worker = WorkerProcess(broker.bootstrap, work / "models", data_dir, prefix, work / "worker.log",
                               session_ttl_s=args.ttl_s, expiry_interval_s=args.expiry_interval_s,
                               log_level="WARNING")
        create_topics(broker.bootstrap, {worker.topic("clicks"): 4})
        worker.start()
        producer = Producer(broker.bootstrap, worker.topic("clicks"),
                            generated_clicks(args.events, args.events_per_s, args.items))
        started = time.monotonic()
        producer.start()
        samples: list[dict[str, float]] = []
        assert worker.process is not None and broker.pid is not None
        try:
            while True:
                stats = worker.stats()
                samples.append({
                    "t": time.monotonic() - started, "events": stats["events"], "sent": producer.sent,
                    "worker_rss_mb": rss_kib(worker.process.pid) / 1024, "rocksdb_mb": du_bytes(data_dir) / 2**20,
                    "sessions": stats["sessions"], "expired": stats["expired_sessions"],
                    "broker_rss_mb": rss_kib(broker.pid) / 1024,
                })
                last = samples[-1]
                print(f"{last['t']:6.0f} s  sent {producer.sent:8d}  processed {stats['events']:8d}  "
                      f"RSS {last['worker_rss_mb']:6.1f} MiB  RocksDB {last['rocksdb_mb']:6.1f} MiB  "
                      f"sessions {stats['sessions']:7d}  expired {stats['expired_sessions']:8d}", flush=True)
                if producer.error is not None:
                    raise RuntimeError(f"producer failed: {producer.error}")
                if stats["events"] >= args.events:
                    break
                if worker.process.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.process.returncode}; log {worker.log_path}")
                time.sleep(args.sample_s)
            seconds = time.monotonic() - started
            final = worker.stats()
        finally:
            worker.stop(signal.SIGTERM)
    summary = summarize(samples)
    summary.update({"seconds": round(seconds, 1), "events_per_s": round(args.events / seconds),
                    "expired_sessions": final["expired_sessions"], "predictions": final["predictions"],
                    "dead_letters": final["dead_letters"], "ttl_s": args.ttl_s,
                    "events_per_event_s": args.events_per_s, "items": args.items, "hidden": args.hidden})
    plot(samples, args.png, f"soak: {args.events:,} generated clicks, one worker, TTL {args.ttl_s:g} s event time "
                            f"({summary['events_per_s']} ev/s)")
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
