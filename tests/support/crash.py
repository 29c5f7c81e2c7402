"""The crash-recovery scenario: a worker SIGKILLed at random moments over a backlog, compared with a fault-free run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_worker.replay import produce_raw
from stream_worker.session_state import SessionState
from tests.support.artifacts import load_model
from tests.support.checks import compare_predictions, compare_states, duplicates_by_incarnation
from tests.support.streaming import StatsWatcher, WorkerProcess
from tests.support.topics import Predicted, TopicFollower, read_changelog
from tests.support.workloads import Message, reference_run


def diagnose(bootstrap: str, prefix: str, event_ids: Sequence[str]) -> str:
    """Where missing events are: their clicks, any prediction a fresh reader finds, the session's changelog."""
    from stream_worker.tail import read_topic

    lines = []
    sessions = {e.rsplit(":", 1)[0] for e in event_ids}
    for topic in (f"{prefix}-clicks", f"{prefix}-predictions", f"{prefix}-worker-sessions-changelog"):
        for record in read_topic(bootstrap, topic, idle_timeout_s=3):
            key = (record.key or b"").decode(errors="replace")
            if key not in sessions:
                continue
            if topic.endswith("changelog"):
                state = SessionState.decode(record.value) if record.value else None
                what = f"event_count={state.event_count} last_offset={state.last_offset}" if state else "deleted"
            else:
                what = json.loads(record.value or b"{}").get("event_id")
            lines.append(f"{topic.rsplit('-', 1)[-1]} p{record.partition} o{record.offset}: {what}")
    return "\n".join(lines)


DELIVERY_COUNTERS = ("redelivered", "gaps", "gap_records", "foreign_partition_clicks")


@dataclass
class CrashReport:
    """Figures of one crash-recovery run."""

    events: int
    model: dict[str, str] = field(default_factory=dict)  # version and family of the model served
    kills: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    predictions: dict[str, Any] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    duplicates: dict[str, Any] = field(default_factory=dict)
    worker_duplicates_seen: int = 0
    # summed over incarnations: what the worker's progress check caught in the consumer's delivery
    delivery: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DELIVERY_COUNTERS, 0))
    final_restart_to_processing_s: float = 0.0

    def add_worker_counters(self, last_stats: dict[str, Any]) -> None:
        self.worker_duplicates_seen += int(last_stats.get("duplicates", 0))
        for name in DELIVERY_COUNTERS:
            self.delivery[name] += int(last_stats.get(name, 0))


def run_crash_recovery(bootstrap: str, models_dir: Path, work: Path, messages: Sequence[Message], n_kills: int = 6,
                       seed: int = 0, prefix: str | None = None, min_gap_s: float = 0.0,
                       max_gap_s: float = 6.0, log: Callable[[str], None] = print) -> CrashReport:
    """Backlog of ``messages``, then a worker that is SIGKILLed ``n_kills`` times at random moments (every second
    restart without its RocksDB directory), then left to finish; everything compared with a fault-free run."""
    rng = random.Random(seed)
    prefix = prefix or f"crash-{os.getpid()}-{time.monotonic_ns()}"
    data_dir = work / f"{prefix}-rocksdb"
    model = load_model(models_dir)
    reference = reference_run(model, messages)
    worker = WorkerProcess(bootstrap, models_dir, data_dir, prefix, work / f"{prefix}.log",
                           session_ttl_s=1e9, log_level=os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"))
    produce_raw(bootstrap, worker.topic("clicks"), messages)
    report = CrashReport(events=len(messages), model={"version": model.version, "family": model.family})
    follower = TopicFollower(bootstrap, worker.topic("predictions"))
    expected = set(reference.predictions)
    predicted = Predicted(follower)
    seen = predicted.events

    def done(_: list[Any]) -> bool:
        return expected <= predicted.update().events

    started = time.monotonic()
    kill_times: list[float] = []
    try:
        for n in range(n_kills):
            restarted = time.monotonic()
            worker.start()
            watcher = StatsWatcher(worker, interval_s=0.2)
            resumed_s = None
            if n == 0:  # once during start-up (group join / table recovery), before any event is processed
                follower.until(lambda _: False, timeout_s=rng.uniform(0.5, 3.0))
            else:  # otherwise mid-stream: a random moment after this incarnation started processing
                if not follower.until(lambda r: done(r) or watcher.last.get("events", 0) > 0,  # noqa: B023
                                      timeout_s=120):
                    raise TimeoutError(f"restart {n}: no event processed within 120 s; log {worker.log_path}")
                if watcher.last.get("events", 0) > 0:  # (else everything was already predicted and committed)
                    resumed_s = time.monotonic() - restarted
                follower.until(lambda _: False, timeout_s=rng.uniform(min_gap_s, max_gap_s))
            killed_at = time.time()
            worker.stop(signal.SIGKILL)
            last = watcher.stop()
            kill_times.append(killed_at)
            report.add_worker_counters(last)
            wipe = n % 2 == 1
            if wipe:
                shutil.rmtree(data_dir, ignore_errors=True)
            follower.poll()
            done(follower.records)
            report.kills.append({"restart_to_processing_s": resumed_s,
                                 "alive_s": round(time.monotonic() - restarted, 1),
                                 "events_consumed_by_incarnation": last.get("events", 0),
                                 "redelivered_duplicates_seen": last.get("duplicates", 0),
                                 "predicted_so_far": len(seen), "rocksdb_deleted_after": wipe})
            log(f"kill {n + 1}: alive {time.monotonic() - restarted:.1f} s (processing after "
                f"{resumed_s if resumed_s is None else round(resumed_s, 1)} s), {len(seen)}/{len(expected)} events "
                f"predicted so far{', RocksDB deleted' if wipe else ''}")
        restarted = time.monotonic()
        worker.start()
        watcher = StatsWatcher(worker, interval_s=0.2)
        follower.until(lambda r: done(r) or watcher.last.get("events", 0) > 0, timeout_s=120)
        report.final_restart_to_processing_s = time.monotonic() - restarted
        if not follower.until(done, timeout_s=300):
            missing = sorted(expected - seen)
            keys = ("events", "lag", "duplicates", "predictions", "dead_letters_by_type", "batch_failures")
            shown = json.dumps({k: watcher.last.get(k) for k in keys})
            where = diagnose(bootstrap, prefix, missing[:3])
            raise TimeoutError(f"only {len(seen)} of {len(expected)} events predicted (missing e.g. {missing[:5]}); "
                               f"worker stats {shown}; log {worker.log_path}\n{where}")
        time.sleep(3)  # a commit interval and the last changelog writes after the last prediction
        assert worker.stop(signal.SIGTERM) == 0
        report.add_worker_counters(watcher.stop())
        report.seconds = time.monotonic() - started
        records = follower.drain(idle_s=2.0)
    finally:
        follower.close()
        if worker.process is not None and worker.process.poll() is None:
            worker.stop(signal.SIGKILL)
    compared = compare_predictions(records, reference)
    report.duplicates = duplicates_by_incarnation(compared.pop("by_event"), kill_times)
    report.predictions = compared
    report.states = compare_states(read_changelog(bootstrap, f"{prefix}-worker"), reference)
    return report
