"""Worker counters for /stats and Prometheus text exposition."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stream_worker.online_metrics import OnlineEvaluator, summary
from stream_worker.processor import BatchOutcome


class HolderStatus(Protocol):
    """What /stats reports of the model holder (stream_worker/model_holder.py)."""

    swaps: int
    failures: int
    last_error: str

    @property
    def model(self) -> Any: ...


STAGES = ("parse", "load_state", "model", "publish", "ack_wait", "store_state")  # the steps of one batch, in order

# Where a click is on its way, each measured from its Kafka CreateTime (the producer's clock; same host in the
# benches): fetched (the consumer's fetch returned it), started (its batch began: after queueing behind earlier
# batches), modelled (its prediction computed), acked (the predictions of its batch acknowledged by the broker),
# stored (its session state and the partition's progress queued for the changelog).
BATCH_SIZE_BUCKETS = np.array([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000], dtype=np.float64)
LATENCY_STAGES = ("fetched", "started", "modelled", "acked", "stored")
LATENCY_BUCKETS_S = np.array([
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
])  # upper bounds (le); one more bucket counts the rest


class LatencyHistogram:
    """A Prometheus histogram of latencies in seconds, observed many at a time (NumPy, no Python per click)."""

    def __init__(self, bounds: np.ndarray = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, not cumulative; last: > bounds[-1]
        self.sum = 0.0

    def observe(self, seconds: np.ndarray) -> None:
        if len(seconds):
            self.counts += np.bincount(np.searchsorted(self.bounds, seconds, side="left"), minlength=len(self.counts))
            self.sum += float(seconds.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())


def histogram_quantile(q: float, counts: Sequence[int] | np.ndarray, bounds: Sequence[float] | np.ndarray) -> float:
    """The q-quantile (0..1) of bucket counts (per bucket, not cumulative), interpolated linearly inside its bucket
    as Prometheus' histogram_quantile does (the first bucket starts at 0; past the last bound: the last bound).
    NaN without observations."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    rank = q * total
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, rank, side="left"))
    if bucket >= len(bounds):
        return float(bounds[-1])
    lower = float(bounds[bucket - 1]) if bucket > 0 else 0.0
    below = float(cumulative[bucket - 1]) if bucket > 0 else 0.0
    inside = float(counts[bucket])
    return lower + (float(bounds[bucket]) - lower) * ((rank - below) / inside if inside else 1.0)


@dataclass
class WorkerStats:
    """Counters since start; offsets and event-time watermarks per partition."""

    online: OnlineEvaluator = field(default_factory=OnlineEvaluator)
    started_at: float = field(default_factory=time.time)
    events: int = 0
    batches: int = 0
    predictions: int = 0
    duplicates: int = 0
    recomputed: int = 0
    expired: int = 0
    corrupt_states: int = 0
    batch_failures: int = 0
    dead_letters: int = 0
    dead_letters_by_type: dict[str, int] = field(default_factory=dict)
    redelivered: int = 0  # delivered clicks below their partition's progress: applied before, skipped
    gaps: int = 0  # offset ranges the consumer did not deliver, read from the broker
    gap_records: int = 0  # records read from the broker to fill them
    foreign: int = 0  # clicks delivered for a partition not assigned to this worker (dropped)
    predictions_by_path: dict[str, int] = field(default_factory=dict)
    last_batch_seconds: float = 0.0
    busy_seconds: float = 0.0
    seconds_by_stage: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {stage: LatencyHistogram() for stage in LATENCY_STAGES})
    batch_sizes: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(BATCH_SIZE_BUCKETS))
    _next_offset: dict[int, int] = field(default_factory=dict)
    _delivered_at: dict[int, float] = field(default_factory=dict)  # partition -> monotonic time of a delivery
    _watermark: dict[int, float] = field(default_factory=dict)
    _last_expiry: float = field(default_factory=time.monotonic)

    def note_offset(self, partition: int, offset: int) -> None:
        self._next_offset[partition] = max(self._next_offset.get(partition, 0), offset + 1)
        self._delivered_at[partition] = time.monotonic()

    def note_assigned(self, partitions: Iterable[int]) -> None:
        """Partitions just assigned count as delivered now: their consumer is not idle before it started."""
        now = time.monotonic()
        for partition in partitions:
            self._delivered_at[partition] = now

    def delivered_within(self, partition: int, seconds: float) -> bool:
        """Was a click of ``partition`` delivered in the last ``seconds``? The first call for a partition
        without deliveries starts its clock (a partition just assigned is not idle yet)."""
        now = time.monotonic()
        return now - self._delivered_at.setdefault(partition, now) < seconds

    def next_offset(self, partition: int) -> int:
        return self._next_offset.get(partition, 0)

    def note_event_time(self, partition: int, timestamp: float) -> None:
        if timestamp > self._watermark.get(partition, float("-inf")):
            self._watermark[partition] = timestamp

    def watermark(self, partition: int) -> float | None:
        return self._watermark.get(partition)

    def note_latency(self, stage: str, at: float, create_times: np.ndarray | None) -> None:
        """Each click of a batch (``create_times``: Kafka CreateTime, seconds) reached ``stage`` at ``at``
        (time.time())."""
        if create_times is not None and len(create_times):
            self.latency[stage].observe(np.maximum(at - create_times, 0.0))

    def note_batch(self, outcome: BatchOutcome, redelivered: int, seconds: dict[str, float]) -> None:
        """Count a processed batch; ``seconds`` it spent in each of the STAGES (``ack_wait`` is waiting, the
        rest is work: ``busy_seconds``)."""
        self.batches += 1
        self.batch_sizes.observe(np.array([len(outcome.predictions)], dtype=np.float64))
        self.predictions += len(outcome.predictions)
        self.redelivered += redelivered
        self.duplicates += outcome.duplicates + redelivered
        self.recomputed += outcome.recomputed
        for version, rank in outcome.ranks:
            self.online.add(version, rank)
        for path, count in outcome.by_path.items():
            self.predictions_by_path[path] = self.predictions_by_path.get(path, 0) + count
        for stage, spent in seconds.items():
            self.seconds_by_stage[stage] += spent
        self.last_batch_seconds = sum(seconds.values())
        self.busy_seconds += self.last_batch_seconds - seconds.get("ack_wait", 0.0)

    def expiry_due(self, interval_s: float) -> bool:
        now = time.monotonic()
        if now - self._last_expiry < interval_s:
            return False
        self._last_expiry = now
        return True

    def snapshot(self, holder: HolderStatus, lags: dict[int, int], sessions: int) -> dict[str, Any]:
        return {
            "uptime_s": time.time() - self.started_at,
            "model_version": holder.model.version,
            "model_swaps": holder.swaps,
            "model_load_failures": holder.failures,
            "model_last_error": holder.last_error,
            "events": self.events,
            "batches": self.batches,
            "predictions": self.predictions,
            "predictions_by_path": dict(self.predictions_by_path),
            "duplicates": self.duplicates,
            "recomputed_sessions": self.recomputed,
            "expired_sessions": self.expired,
            "corrupt_states": self.corrupt_states,
            "batch_failures": self.batch_failures,
            "dead_letters": self.dead_letters,
            "dead_letters_by_type": dict(self.dead_letters_by_type),
            "redelivered": self.redelivered,
            "gaps": self.gaps,
            "gap_records": self.gap_records,
            "foreign_partition_clicks": self.foreign,
            "sessions": sessions,
            "lag": {str(p): lag for p, lag in sorted(lags.items())},
            "lag_total": sum(lags.values()),
            "last_batch_seconds": self.last_batch_seconds,
            "busy_seconds": self.busy_seconds,
            "seconds_by_stage": dict(self.seconds_by_stage),
            "latency_buckets_s": self.latency[LATENCY_STAGES[0]].bounds.tolist(),
            "latency": {stage: {"count": h.count, "sum_s": h.sum, "buckets": h.counts.tolist(),
                                **{f"p{q}_ms": _ms(histogram_quantile(q / 100, h.counts, h.bounds))
                                   for q in (50, 90, 99)}}
                        for stage, h in self.latency.items()},
            "batch_size_buckets": self.batch_sizes.bounds.tolist(),
            "batch_sizes": self.batch_sizes.counts.tolist(),
            "batch_sizes_sum": self.batch_sizes.sum,
            "online": {
                version: {"since_start": summary(total), "window": summary(window)}
                for version in self.online.versions()
                for total, window in [self.online.counts(version)]
            },
        }


def _ms(seconds: float) -> float | None:
    return None if np.isnan(seconds) else round(float(seconds) * 1000.0, 3)


def prometheus_text(snapshot: dict[str, Any]) -> str:
    """Prometheus text format (0.0.4) of a stats snapshot."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP streamrec_{name} {help_text}")
        lines.append(f"# TYPE streamrec_{name} {kind}")
        lines.extend(f"streamrec_{name}{labels} {value}" for labels, value in samples)

    def histogram(name: str, help_text: str, label: str | None, bounds: list[float],
                  series: dict[str, tuple[list[int], float]]) -> None:
        lines.append(f"# HELP streamrec_{name} {help_text}")
        lines.append(f"# TYPE streamrec_{name} histogram")
        for value, (counts, total) in series.items():
            prefix = f'{label}="{value}",' if label else ""
            cumulative = np.cumsum(counts).tolist()
            for bound, count in zip([*(f"{b:g}" for b in bounds), "+Inf"], cumulative, strict=True):
                lines.append(f'streamrec_{name}_bucket{{{prefix}le="{bound}"}} {count}')
            labels = f"{{{prefix[:-1]}}}" if prefix else ""
            lines.append(f"streamrec_{name}_sum{labels} {total}")
            lines.append(f"streamrec_{name}_count{labels} {cumulative[-1]}")

    metric("events_total", "counter", "Click messages consumed.", [("", snapshot["events"])])
    metric("predictions_total", "counter", "Predictions published, by path.",
           [(f'{{path="{p}"}}', n) for p, n in snapshot["predictions_by_path"].items()])
    metric("dead_letters_total", "counter", "Messages sent to the dead-letter topic, by error type.",
           [(f'{{type="{t}"}}', n) for t, n in snapshot["dead_letters_by_type"].items()])
    metric("duplicates_total", "counter", "Clicks already applied (not applied again).", [("", snapshot["duplicates"])])
    metric("redelivered_total", "counter", "Delivered clicks below their partition's progress (skipped).",
           [("", snapshot["redelivered"])])
    metric("gap_records_total", "counter", "Clicks the consumer did not deliver, read from the broker.",
           [("", snapshot["gap_records"])])
    metric("expired_sessions_total", "counter", "Sessions dropped by the idle TTL.",
           [("", snapshot["expired_sessions"])])
    metric("model_swaps_total", "counter", "Model versions swapped in.", [("", snapshot["model_swaps"])])
    metric("model_load_failures_total", "counter", "Model versions refused.", [("", snapshot["model_load_failures"])])
    metric("sessions", "gauge", "Sessions held in the table (estimate).", [("", snapshot["sessions"])])
    metric("consumer_lag", "gauge", "Clicks not yet processed, by partition.",
           [(f'{{partition="{p}"}}', lag) for p, lag in snapshot["lag"].items()])
    metric("model_info", "gauge", "Model version served.", [(f'{{version="{snapshot["model_version"]}"}}', 1)])
    histogram("click_latency_seconds", "Time from a click's Kafka CreateTime until it reached a stage "
              "(fetched, started, modelled, acked, stored).", "stage", snapshot["latency_buckets_s"],
              {stage: (h["buckets"], h["sum_s"]) for stage, h in snapshot["latency"].items()})
    histogram("batch_predictions", "Predictions per applied batch.", None, snapshot["batch_size_buckets"],
              {"": (snapshot["batch_sizes"], snapshot["batch_sizes_sum"])})
    online = snapshot["online"]
    metric("online_evaluated_total", "counter", "Predictions whose next click was seen, by model version.",
           [(f'{{version="{v}"}}', m["since_start"]["n"]) for v, m in online.items()])
    metric("online_recall", "gauge", "Share of next clicks in the preceding top-k (hit rate), by version, k, scope.",
           [(f'{{version="{v}",k="{k}",scope="{scope}"}}', m[scope][f"recall@{k}"])
            for v, m in online.items() for scope in ("since_start", "window") for k in (1, 5, 10, 20)])
    metric("online_mrr20", "gauge", "Mean reciprocal rank within the top 20, by version and scope.",
           [(f'{{version="{v}",scope="{scope}"}}', m[scope]["mrr@20"]) for v, m in online.items()
            for scope in ("since_start", "window")])
    return "\n".join(lines) + "\n"
