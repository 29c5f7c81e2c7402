"""The scale-out scenario: two workers in one group, one SIGKILLed mid-stream, a third joining, a model swap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkit.artifact import set_current
from stream_worker.broker import create_topics
from tests.support.artifacts import load_model
from tests.support.checks import compare_predictions, compare_states
from tests.support.streaming import StatsWatcher, WorkerProcess, du_bytes
from tests.support.topics import Predicted, TopicFollower, read_changelog
from tests.support.workloads import Message, reference_run


class RateProducer(threading.Thread):
    """Sends ``messages`` in order at ``rate`` events/s from a thread (kafka-python, acks=all)."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=[self.bootstrap], acks="all", linger_ms=5)
        try:
            started = time.monotonic()
            for n, (key, value) in enumerate(self.messages):
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.send(self.topic, key=key, value=value)
                self.sent = n + 1
            producer.flush()
        except BaseException as error:  # reported by the caller
            self.error = error
        finally:
            producer.close(timeout=5)


def partition_dbs(data_dir: Path) -> dict[int, int]:
    """Bytes of each ``sessions-<partition>.db`` RocksDB directory a worker holds locally."""
    tables = data_dir / "v1" / "tables"
    if not tables.is_dir():
        return {}
    return {int(p.name[len("sessions-"):-len(".db")]): du_bytes(p) for p in tables.glob("sessions-*.db")}


def assigned(stats: dict[str, Any]) -> set[int]:
    """Clicks partitions a worker reports in /stats (those it holds and has seen a high-water mark for)."""
    return {int(p) for p in stats.get("lag", {})}


@dataclass
class ScaleOutReport:
    """Figures of one scale-out run."""

    standby_replicas: int
    events: int
    rate: float
    before_kill: dict[str, list[int]] = field(default_factory=dict)
    moved_partitions: list[int] = field(default_factory=list)
    survivor_standby_db_bytes: dict[int, int] = field(default_factory=dict)
    recovery_s: dict[int, float] = field(default_factory=dict)  # moved partition -> kill to first new prediction
    recovery_max_s: float = 0.0
    after_kill: dict[str, list[int]] = field(default_factory=dict)
    after_third: dict[str, list[int]] = field(default_factory=dict)
    third_join_pause_s: float = 0.0  # longest gap between predictions of any partition while the third joined
    predictions: dict[str, Any] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    model_swap: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, follower: TopicFollower | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        if follower is not None:
            follower.poll(100)
        else:
            time.sleep(0.1)
    raise TimeoutError(f"{what} not reached within {timeout_s} s")


def run_scale_out(bootstrap: str, models_dir: Path, work: Path, messages: Sequence[Message], rate: float,
                  standby_replicas: int, partitions: int = 4, phase_s: float = 15.0,
                  log: Callable[[str], None] = print) -> ScaleOutReport:
    """A, B share a group; SIGKILL A after ``phase_s`` s of processing; C joins ``phase_s`` s after B took over."""
    prefix = f"scale-{standby_replicas}-{os.getpid()}-{time.monotonic_ns()}"
    own_models = work / f"{prefix}-models"
    shutil.copytree(models_dir, own_models, symlinks=True)
    reference = reference_run(load_model(own_models), messages)
    report = ScaleOutReport(standby_replicas, len(messages), rate)
    settings = {"session_ttl_s": 1e9, "standby_replicas": standby_replicas, "partitions": partitions,
                "log_level": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING")}
    workers = {name: WorkerProcess(bootstrap, own_models, work / f"{prefix}-{name}", prefix,
                                   work / f"{prefix}-{name}.log", **settings) for name in "ABC"}
    clicks = workers["A"].topic("clicks")
    create_topics(bootstrap, {clicks: partitions, workers["A"].topic("predictions"): partitions})
    follower = TopicFollower(bootstrap, workers["A"].topic("predictions"))
    watchers: dict[str, StatsWatcher] = {}
    producer = RateProducer(bootstrap, clicks, messages, rate)
    started = time.monotonic()
    try:
        for name in "AB":
            workers[name].start()
            watchers[name] = StatsWatcher(workers[name], interval_s=0.2)
        producer.start()
        _wait(lambda: all(assigned(watchers[n].last) for n in "AB")
              and len(assigned(watchers["A"].last) | assigned(watchers["B"].last)) == partitions,
              120, "A and B both assigned", follower)
        time.sleep(phase_s)
        report.before_kill = {n: sorted(assigned(watchers[n].last)) for n in "AB"}
        moved = assigned(watchers["A"].last)
        report.moved_partitions = sorted(moved)
        report.survivor_standby_db_bytes = {p: b for p, b in partition_dbs(work / f"{prefix}-B").items() if p in moved}
        killed_at = time.time()
        workers["A"].stop(signal.SIGKILL)
        watchers.pop("A").stop()
        log(f"standby={standby_replicas}: killed A holding partitions {sorted(moved)} "
            f"(B's local copies of them: {report.survivor_standby_db_bytes} bytes)")

        predicted = Predicted(follower)
        resumed: dict[int, float] = {}

        def all_resumed() -> bool:
            for created, partition, _, _ in predicted.update().rows:
                if created > killed_at and partition in moved and partition not in resumed:
                    resumed[partition] = created - killed_at
            return set(resumed) == moved

        _wait(all_resumed, 180, "moved partitions resumed on B", follower)
        report.recovery_s = {p: round(v, 2) for p, v in sorted(resumed.items())}
        report.recovery_max_s = round(max(resumed.values()), 2)
        report.after_kill = {"B": sorted(assigned(watchers["B"].last))}
        log(f"standby={standby_replicas}: kill -> first prediction per moved partition {report.recovery_s}")

        time.sleep(phase_s)
        joined_at = time.time()
        workers["C"].start()
        watchers["C"] = StatsWatcher(workers["C"], interval_s=0.2)
        _wait(lambda: bool(assigned(watchers["C"].last)), 180, "C assigned partitions", follower)
        time.sleep(5)
        report.after_third = {n: sorted(assigned(watchers[n].last)) for n in "BC"}
        producer.join(timeout=len(messages) / rate + 120)
        if producer.error is not None:
            raise RuntimeError(f"producer failed: {producer.error}")
        expected = set(reference.predictions)
        try:
            _wait(lambda: expected <= predicted.update().events, 300, "every event predicted", follower)
        except TimeoutError:
            missing = expected - predicted.events
            log(f"{len(missing)} events without prediction, e.g. {sorted(missing)[:5]}; stats "
                + json.dumps({n: {k: w.last.get(k) for k in ("events", "lag", "predictions")}
                              for n, w in watchers.items()}))
            raise
        gaps: dict[int, float] = {}
        window = sorted((created, partition) for created, partition, _, _ in predicted.rows
                        if joined_at - 5 <= created)
        last_seen: dict[int, float] = {}
        for stamp, partition in window:
            if partition in last_seen:
                gaps[partition] = max(gaps.get(partition, 0.0), stamp - last_seen[partition])
            last_seen[partition] = stamp
        report.third_join_pause_s = round(max(gaps.values(), default=0.0), 2)
        log(f"standby={standby_replicas}: C joined; assignment {report.after_third}; "
            f"longest per-partition prediction gap {report.third_join_pause_s} s")

        # A model swap: one worker receives the update message (1 partition), the other follows `current`.
        report.model_swap = report_swap(own_models, workers, watchers, bootstrap, messages, predicted)
        time.sleep(3)
        for name in list(watchers):
            watchers.pop(name).stop()
            assert workers[name].stop(signal.SIGTERM) == 0, f"worker {name} did not stop cleanly"
        report.seconds = time.monotonic() - started
        records = follower.drain(idle_s=2.0)
    finally:
        follower.close()
        for name, watcher in watchers.items():
            watcher.stop()
            if workers[name].process is not None:
                workers[name].stop(signal.SIGKILL)
    compared = compare_predictions([r for r in records if json.loads(r.value)["event_id"] in reference.predictions],
                                   reference)
    compared.pop("by_event")
    report.predictions = compared
    table = read_changelog(bootstrap, f"{prefix}-worker")
    # Sessions of the clicks sent after the model swap are not in the fault-free run.
    report.states = compare_states({k: v for k, v in table.items() if not k.endswith(b"-swap")}, reference)
    return report


def report_swap(models_dir: Path, workers: dict[str, WorkerProcess], watchers: dict[str, StatsWatcher],
                bootstrap: str, messages: Sequence[Message], predicted: Predicted) -> dict[str, Any]:
    """Publish a new version (a copy of current under a new name) + a model-update message; time until every live
    worker serves it; then send clicks of new sessions and check that every partition predicts with it."""
    from schemas import ClickEvent
    from stream_worker.replay import produce_raw

    current = (models_dir / "current").resolve()
    version = f"{current.name[:40]}-swap"
    shutil.copytree(current, models_dir / version)
    manifest = json.loads((models_dir / version / "manifest.json").read_text())
    manifest["version"] = version
    (models_dir / version / "manifest.json").write_text(json.dumps(manifest))
    set_current(models_dir, version)
    some = next(iter(workers.values()))
    produce_raw(bootstrap, some.topic("model_updates"), [(version.encode(), json.dumps(manifest).encode())])
    def serving(watcher: StatsWatcher) -> Callable[[], bool]:
        return lambda: watcher.last.get("model_version") == version

    took = {name: round(_wait(serving(watcher), 60, f"{name} swapped"), 2) for name, watcher in watchers.items()}
    swaps = {name: watcher.last.get("model_swaps") for name, watcher in watchers.items()}
    fresh: list[Message] = []
    for _, value in messages[:2000]:
        event = ClickEvent.model_validate_json(value or b"")
        event = event.model_copy(update={"session_id": f"{event.session_id}-swap",
                                         "event_id": f"{event.event_id}-swap"})
        fresh.append((event.session_id.encode(), event.model_dump_json().encode()))
    ids = {json.loads(v or b"")["event_id"] for _, v in fresh}
    produce_raw(bootstrap, some.topic("clicks"), fresh)
    _wait(lambda: ids <= predicted.update().events, 120, "post-swap clicks predicted", predicted.follower)
    versions: dict[int, set[str]] = {}
    for _, partition, event_id, model_version in predicted.rows:
        if event_id in ids:
            versions.setdefault(partition, set()).add(model_version)
    return {"version": version, "seconds_to_serve": took, "model_swaps": swaps,
            "post_swap_versions_by_partition": {p: sorted(v) for p, v in sorted(versions.items())},
            "all_post_swap_on_new_version": all(v == {version} for v in versions.values())}
