"""Crash recovery on the embedded broker: SIGKILL the worker at random points (sometimes losing RocksDB), then
check every event against an uninterrupted in-process run (predictions, duplicates, final session states).

Also holds the helpers the other reliability benchmarks and tests/test_reliability.py share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modelkit.artifact import load_artifact  # noqa: E402
from schemas import ClickEvent  # noqa: E402
from stream_worker.broker import EmbeddedBroker  # noqa: E402
from stream_worker.processor import Click, process_batch  # noqa: E402
from stream_worker.progress import PROGRESS_KEY  # noqa: E402
from stream_worker.replay import click_messages, produce_raw, time_ordered  # noqa: E402
from stream_worker.serving import ServingModel  # noqa: E402
from stream_worker.session_state import SessionState  # noqa: E402
from tests.streaming import WorkerProcess, same_ranking  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "rsc15-100k"
Message = tuple[bytes | None, bytes | None]

# ------------------------------------------------------------------------------------------------ workload


def workload(n_events: int, data_dir: Path = DATA) -> list[Message]:
    """Real YOOCHOOSE clicks (train_full) in time order, repeated with fresh session ids up to ``n_events``."""
    from offline.loaders import load_events

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_full.txt", "session-tsv")
    messages: list[Message] = []
    copy = 0
    while len(messages) < n_events:
        shifted = frame.assign(session_id=frame["session_id"] + (f"-r{copy}" if copy else ""))
        messages += [(k, v) for k, v, _ in click_messages(time_ordered(shifted))]
        copy += 1
    return messages[:n_events]


def train_model(models_dir: Path, data_dir: Path = DATA) -> Path:
    """GRU4REC on train_tr with n_epochs=2 (as the e2e tests), published as ``models_dir/current``."""
    from offline.hyperparams import GRU4RecParams
    from offline.loaders import load_events
    from offline.pipeline import train_version

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    path, _, _ = train_version(frame, GRU4RecParams(n_epochs=2), models_dir, progress=False)
    return path


# ------------------------------------------------------------------------------------------- fault-free run


@dataclass
class Reference:
    """What an uninterrupted run produces: one prediction per event id and the final state per session."""

    predictions: dict[str, dict[str, Any]]
    states: dict[str, SessionState]


def clicks_of(messages: Sequence[Message]) -> dict[str, list[Click]]:
    """Valid clicks grouped by session in stream order (offset = position in ``messages``)."""
    clicks: dict[str, list[Click]] = {}
    for offset, (_, value) in enumerate(messages):
        if value is None:
            continue
        event = ClickEvent.model_validate_json(value)
        clicks.setdefault(event.session_id, []).append(Click(event, 0, offset))
    return clicks


def reference_run(model: ServingModel, messages: Sequence[Message], k: int = 20, ring_size: int = 50) -> Reference:
    """process_batch over the whole stream at once: the fault-free predictions and final states."""
    outcome = process_batch(model, clicks_of(messages), {}, k=k, ring_size=ring_size, received_at=0.0)
    predictions = {}
    for _, payload in outcome.predictions:
        prediction = json.loads(payload)
        predictions[prediction["event_id"]] = prediction
    return Reference(predictions, outcome.states)


def given_or_trained(models_dir: Path | None, work: Path) -> Path:
    """``--models-dir`` when given, else a model trained on train_tr under ``work``."""
    if models_dir is None:
        models_dir = work / "models"
        train_model(models_dir)
    return models_dir


def load_model(models_dir: Path) -> ServingModel:
    return ServingModel(load_artifact(models_dir / "current"))


# ------------------------------------------------------------------------------------------------ topics


class TopicFollower:
    """Reads every partition of a topic from the beginning, keeping all records (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False,
                                      allow_auto_create_topics=False, auto_offset_reset="earliest",
                                      fetch_max_wait_ms=100, max_poll_records=5000)
        self.records: list[Any] = []
        self._assigned = False

    def poll(self, timeout_ms: int = 200) -> int:
        """Read what is there now; returns how many new records arrived."""
        from kafka import TopicPartition

        if not self._assigned:
            partitions = self.consumer.partitions_for_topic(self.topic)
            if not partitions:
                time.sleep(timeout_ms / 1000)
                return 0
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self._assigned = True
        new = 0
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.records += batch
            new += len(batch)
        return new

    def until(self, done: Callable[[list[Any]], bool], timeout_s: float, idle_s: float | None = None,
              tick: Callable[[], None] | None = None) -> bool:
        """Poll until ``done(records)``; False after ``timeout_s`` (or ``idle_s`` without a new record)."""
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll():
                last_new = time.monotonic()
            if tick is not None:
                tick()
            if done(self.records):
                return True
            if idle_s is not None and time.monotonic() - last_new > idle_s:
                return False
        return False

    def drain(self, idle_s: float = 2.0) -> list[Any]:
        """Read until nothing new arrives for ``idle_s`` seconds."""
        self.until(lambda _: False, timeout_s=600, idle_s=idle_s)
        return self.records

    def close(self) -> None:
        self.consumer.close()


class Predicted:
    """Incremental index over the records of a predictions TopicFollower."""

    def __init__(self, follower: TopicFollower) -> None:
        self.follower = follower
        self.events: set[str] = set()
        self.rows: list[tuple[float, int, str, str]] = []  # (CreateTime s, source partition, event id, version)

    def update(self) -> Predicted:
        for record in self.follower.records[len(self.rows):]:
            prediction = json.loads(record.value)
            self.rows.append((record.timestamp / 1000, prediction["partition"], prediction["event_id"],
                              prediction["model_version"]))
            self.events.add(prediction["event_id"])
        return self


def last_values(records: Iterable[Any]) -> dict[bytes, bytes | None]:
    """Last value per key in offset order within each partition (a tombstone is None)."""
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return {r.key: r.value for r in ordered}


def read_changelog(bootstrap: str, app_id: str, idle_s: float = 3.0) -> dict[bytes, bytes | None]:
    """The sessions table as its changelog ``<app_id>-sessions-changelog`` says: last value per session."""
    follower = TopicFollower(bootstrap, f"{app_id}-sessions-changelog")
    try:
        return {k: v for k, v in last_values(follower.drain(idle_s)).items() if k != PROGRESS_KEY}
    finally:
        follower.close()


# ------------------------------------------------------------------------------------------------ checks


def compare_states(table: dict[bytes, bytes | None], reference: Reference, atol: float = 1e-5) -> dict[str, Any]:
    """Final table vs the fault-free states: hidden allclose(atol), ring, counts and version exactly."""
    missing, wrong, extra = [], [], []
    max_diff = 0.0
    for session_id, want in reference.states.items():
        raw = table.get(session_id.encode("utf-8", "surrogatepass"))
        if raw is None:
            missing.append(session_id)
            continue
        got = SessionState.decode(raw)
        diff = float(np.abs(got.hidden - want.hidden).max()) if got.hidden.shape == want.hidden.shape else np.inf
        max_diff = max(max_diff, diff)
        if (diff > atol or got.ring != want.ring or got.event_count != want.event_count
                or got.known_count != want.known_count or got.model_version != want.model_version
                or got.last_timestamp != want.last_timestamp):
            wrong.append(session_id)
    keys = {s.encode("utf-8", "surrogatepass") for s in reference.states}
    extra = [k.decode(errors="replace") for k, v in table.items() if v is not None and k not in keys]
    return {"sessions": len(reference.states), "missing": len(missing), "wrong": len(wrong), "extra": len(extra),
            "max_hidden_diff": max_diff, "examples": (missing + wrong + extra)[:5]}


def compare_predictions(records: Iterable[Any], reference: Reference) -> dict[str, Any]:
    """Every event predicted? Duplicates? Every copy equal to the fault-free prediction (up to float noise)?"""
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        prediction = json.loads(record.value)
        prediction["_created_ms"] = record.timestamp
        by_event.setdefault(prediction["event_id"], []).append(prediction)
    wrong = [e for e, copies in by_event.items()
             if e not in reference.predictions or not all(same_ranking(c, reference.predictions[e]) for c in copies)]
    total = sum(len(c) for c in by_event.values())
    return {
        "events": len(reference.predictions),
        "predictions": total,
        "without_prediction": len(set(reference.predictions) - set(by_event)),
        "duplicate_predictions": total - len(by_event),
        "events_with_duplicates": sum(len(c) > 1 for c in by_event.values()),
        "differing_from_fault_free": len(wrong),
        "examples": wrong[:5],
        "by_event": by_event,
    }


def duplicates_by_incarnation(by_event: dict[str, list[dict[str, Any]]], kills: Sequence[float]) -> dict[str, Any]:
    """Attribute each duplicated event to worker incarnations (split at the kill times, wall clock ms): a
    duplicate explained by at-least-once redelivery has its copies produced by different incarnations."""
    bounds = [k * 1000.0 for k in kills]

    def incarnation(created_ms: float) -> int:
        return sum(created_ms > b for b in bounds)

    same_incarnation = 0
    per_kill = [0] * (len(bounds) + 1)
    for copies in by_event.values():
        if len(copies) < 2:
            continue
        runs = [incarnation(c["_created_ms"]) for c in copies]
        if len(set(runs)) < len(runs):
            same_incarnation += 1
        for run in sorted(set(runs))[1:]:
            per_kill[run - 1] += 1
    return {"same_incarnation": same_incarnation, "after_kill": per_kill[: len(bounds)]}


# ------------------------------------------------------------------------------------------------ processes


class StatsWatcher:
    """Polls a worker's /stats in a thread; keeps the last answer (the only one left after a SIGKILL)."""

    def __init__(self, worker: WorkerProcess, interval_s: float = 0.5) -> None:
        self.worker = worker
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            with contextlib.suppress(OSError):
                self.last = self.worker.stats()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        return self.last


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (/proc/PID/status VmRSS); 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def du_bytes(path: Path) -> int:
    """Bytes of all regular files under ``path`` (what ``du --apparent-size`` would say)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# ------------------------------------------------------------------------------------------------ the run


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
    report = CrashReport(events=len(messages))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", type=Path, help="serve this model (default: train one on train_tr)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    messages = workload(args.events)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        work = Path(tmp)
        models_dir = given_or_trained(args.models_dir, work)
        report = run_crash_recovery(broker.bootstrap, models_dir, work, messages, args.kills, args.seed)
    result = {k: v for k, v in report.__dict__.items()}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    ok = (report.predictions["without_prediction"] == 0 and report.predictions["differing_from_fault_free"] == 0
          and report.states["missing"] == report.states["wrong"] == 0 and report.duplicates["same_incarnation"] == 0)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
