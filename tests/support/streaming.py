"""The worker as a subprocess (start, /stats, signals), its resources, and online metrics from its predictions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stream_worker.broker import free_port


class WorkerProcess:
    """``streamrec worker`` in a subprocess with its own topics, data dir and web port."""

    def __init__(self, bootstrap: str, models_dir: Path, data_dir: Path, prefix: str, log_path: Path,
                 **settings: Any) -> None:
        self.web_port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "STREAMREC_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMREC_MODELS_DIR": str(models_dir),
            "STREAMREC_DATA_DIR": str(data_dir),
            "STREAMREC_WEB_PORT": str(self.web_port),
            "STREAMREC_APP_ID": f"{prefix}-worker",
            "STREAMREC_CLICKS_TOPIC": f"{prefix}-clicks",
            "STREAMREC_PREDICTIONS_TOPIC": f"{prefix}-predictions",
            "STREAMREC_DEAD_LETTER_TOPIC": f"{prefix}-dead-letter",
            "STREAMREC_MODEL_UPDATES_TOPIC": f"{prefix}-model-updates",
            "STREAMREC_METRICS_TOPIC": f"{prefix}-metrics",
            "STREAMREC_MODEL_POLL_S": "0.5",
            **{f"STREAMREC_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def topic(self, name: str) -> str:
        """This worker's name of a topic setting, e.g. ``topic("clicks")``."""
        return self.env[f"STREAMREC_{name.upper()}_TOPIC"]

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; log: {self.log_path}")
            try:
                if self.stats().get("model_version"):
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {timeout} s; log: {self.log_path}")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/stats", timeout=2) as response:
            return dict(json.loads(response.read()))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as response:
            return str(response.read().decode())

    @property
    def url(self) -> str:
        """The worker's canonical URL (what Faust's routing knows it by)."""
        return f"http://127.0.0.1:{self.web_port}"

    def request(self, path: str, timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
        """GET ``path`` (already percent-encoded): status, JSON body and headers, also for 4xx/5xx answers."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as error:
            body = error.read()
            return error.code, json.loads(body) if body else None, dict(error.headers)

    def log_count(self, text: str) -> int:
        """Lines of the worker's log (all its runs) that contain ``text``."""
        if not self.log_path.exists():
            return 0
        return sum(text in line for line in self.log_path.read_text(errors="replace").splitlines())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` to the worker (its own PID only) and wait for it to exit."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def wait_until(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 60.0,
                   what: str = "condition") -> dict[str, Any]:
        """Poll /stats until ``condition(stats)`` holds; the stats that satisfied it."""
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                stats = self.stats()
                if condition(stats):
                    return stats
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{what} not reached within {timeout} s; last stats {stats}; log {self.log_path}")


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


def predictions_by_event(records: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    """Prediction JSON objects grouped by event id (duplicates kept, in topic order)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        prediction = json.loads(record.value or b"")
        grouped.setdefault(prediction["event_id"], []).append(prediction)
    return grouped


def online_ranks(
    predictions: dict[str, list[dict[str, Any]]], frame: pd.DataFrame, event_id_of: Callable[[Any, int], str]
) -> np.ndarray:
    """Rank of each next click within the prediction made after the previous click (0 = not in the top-k).

    Ties count against the model, as offline: rank = number of listed items scoring >= the target.
    """
    ranks = []
    ordered = frame.sort_values("timestamp", kind="stable")
    for session_id, session in ordered.groupby("session_id", sort=False):
        items = session["item_id"].tolist()
        for position in range(len(items) - 1):
            prediction = predictions[event_id_of(session_id, position)][-1]
            listed = dict(zip(prediction["items"], prediction["scores"], strict=True))
            target = items[position + 1]
            ranks.append(sum(s >= listed[target] for s in listed.values()) if target in listed else 0)
    return np.array(ranks)
