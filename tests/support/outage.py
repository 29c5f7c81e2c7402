"""Broker outages under a running worker: a restartable tansu with any storage, a moto S3 server, the scenario."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_worker.broker import free_port, port_in_use, tansu_binary, wait_for_kafka
from stream_worker.replay import produce_raw
from tests.support.artifacts import load_model
from tests.support.checks import compare_predictions, compare_states
from tests.support.streaming import StatsWatcher, WorkerProcess
from tests.support.topics import Predicted, TopicFollower, read_changelog
from tests.support.workloads import Message, reference_run


class Tansu:
    """A tansu broker on a fixed port with any storage URL; stopped (SIGTERM) and started again by its own PID."""

    def __init__(self, storage: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.storage = storage
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def start(self, timeout_s: float = 60.0) -> Tansu:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is busy")
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
             "--advertised-listener-url", f"tcp://localhost:{self.port}", "--storage-engine", self.storage],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_kafka(self.bootstrap, timeout_s=timeout_s)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop with ``sig`` (SIGKILL: an abrupt outage; SIGTERM drains connected clients for ~5 s first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


class MotoServer:
    """moto's S3 server on a free port (``moto_server`` from pip ``moto[server]``), with one bucket."""

    def __init__(self, executable: str, bucket: str, log_path: Path) -> None:
        self.port = free_port()
        self.bucket = bucket
        log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"moto server did not start; see {log_path}") from None
                time.sleep(0.3)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tansu_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def find_moto_server() -> str | None:
    """``moto_server`` from $MOTO_SERVER, the PATH, or beside this Python."""
    candidates = [os.environ.get("MOTO_SERVER"), shutil.which("moto_server"),
                  str(Path(sys.executable).parent / "moto_server")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@dataclass
class OutageReport:
    """What one outage did."""

    storage: str
    events: int
    outage_s: float
    consumed_before_outage: int = 0
    worker_alive_after: bool = False
    worker_exit_code: int | None = None
    resumed_after_restart_s: float | None = None
    predictions: dict[str, Any] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    after_restart: dict[str, Any] = field(default_factory=dict)
    log_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _errors(log_path: Path, limit: int = 12) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    keep = [line[:220] for line in lines if " ERROR " in line or " CRITICAL " in line or "Error:" in line]
    unique: list[str] = []
    for line in keep:
        body = line[24:] if line[:4].isdigit() else line
        if all(body not in u for u in unique):
            unique.append(line)
    return unique[:limit]


def _wait(condition: Callable[[], bool], timeout_s: float, poll: Callable[[], Any] | None = None) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        if poll is not None:
            poll()
        else:
            time.sleep(0.2)
    return None


def run_outage(broker: Tansu, models_dir: Path, work: Path, messages: Sequence[Message], outage_s: float,
               durable: bool, log: Callable[[str], None] = print) -> OutageReport:
    """Backlog, worker, stop the broker once a third is consumed, start it again after ``outage_s`` s."""
    prefix = f"outage-{'s3' if durable else 'mem'}-{os.getpid()}-{time.monotonic_ns()}"
    report = OutageReport(storage=broker.storage, events=len(messages), outage_s=outage_s)
    reference = reference_run(load_model(models_dir), messages)
    worker = WorkerProcess(broker.bootstrap, models_dir, work / f"{prefix}-rocksdb", prefix, work / f"{prefix}.log",
                           session_ttl_s=1e9, log_level="INFO")
    produce_raw(broker.bootstrap, worker.topic("clicks"), messages)
    started = time.monotonic()
    worker.start(timeout=180)
    watcher = StatsWatcher(worker, interval_s=0.2)
    try:
        if _wait(lambda: watcher.last.get("events", 0) >= len(messages) // 3, 300) is None:
            raise TimeoutError(f"worker did not consume a third of the backlog; log {worker.log_path}")
        report.consumed_before_outage = watcher.last.get("events", 0)
        broker.stop(signal.SIGKILL)
        log(f"{prefix}: broker killed after {report.consumed_before_outage} events consumed")
        time.sleep(outage_s)
        broker.start()
        restarted = time.monotonic()
        log(f"{prefix}: broker started again after {outage_s} s")
        if durable:
            follower = TopicFollower(broker.bootstrap, worker.topic("predictions"))
            predicted = Predicted(follower)
            expected = set(reference.predictions)
            try:
                took = _wait(lambda: expected <= predicted.update().events, 600, lambda: follower.poll(200))
                report.resumed_after_restart_s = took
                time.sleep(3)
                records = follower.drain(2.0)
            finally:
                follower.close()
            compared = compare_predictions(records, reference)
            compared.pop("by_event")
            report.predictions = compared
        else:
            # Memory storage: the topics are gone. Watch the worker for a while, then send the rest of the
            # stream again (as a producer would after the reset) and see what it makes of it.
            time.sleep(30)
            report.worker_alive_after = worker.process is not None and worker.process.poll() is None
            report.stats_after = {k: watcher.last.get(k) for k in ("events", "predictions", "duplicates",
                                                                     "dead_letters_by_type", "batch_failures")}
            if report.worker_alive_after:
                rest = messages[len(messages) // 2:]
                before = dict(watcher.last)
                produce_raw(broker.bootstrap, worker.topic("clicks"), rest)
                _wait(lambda: watcher.last.get("events", 0) - before.get("events", 0) >= len(rest), 120)
                time.sleep(2)
                after = dict(watcher.last)
                report.after_restart = {
                    "resent_events": len(rest),
                    "consumed": after.get("events", 0) - before.get("events", 0),
                    "predictions": after.get("predictions", 0) - before.get("predictions", 0),
                    "dropped_as_duplicates": after.get("duplicates", 0) - before.get("duplicates", 0),
                }
        report.worker_alive_after = worker.process is not None and worker.process.poll() is None
        report.worker_exit_code = None if report.worker_alive_after else worker.process.returncode  # type: ignore[union-attr]
        report.stats_after = report.stats_after or {k: watcher.last.get(k) for k in (
            "events", "predictions", "duplicates", "dead_letters_by_type", "batch_failures")}
        del restarted
    finally:
        watcher.stop()
        if worker.process is not None and worker.process.poll() is None:
            worker.stop(signal.SIGTERM)
    if durable:
        report.states = compare_states(read_changelog(broker.bootstrap, f"{prefix}-worker"), reference)
    else:
        # What a restart of the worker does now: its RocksDB holds offsets of topics the broker no longer has.
        worker.env["STREAMREC_LOG_LEVEL"] = "INFO"
        try:
            worker.start(timeout=60)
            time.sleep(10)
            alive = worker.process is not None and worker.process.poll() is None
            report.after_restart["worker_restart_with_old_rocksdb"] = "running" if alive else \
                f"exited with {worker.process.returncode}"  # type: ignore[union-attr]
        except (RuntimeError, TimeoutError) as error:
            report.after_restart["worker_restart_with_old_rocksdb"] = f"failed: {str(error)[:160]}"
        finally:
            if worker.process is not None and worker.process.poll() is None:
                worker.stop(signal.SIGTERM)
    report.log_errors = _errors(worker.log_path)
    report.seconds = time.monotonic() - started
    return report
