"""`streamrec demo`: embedded broker, a trained model, the worker, a replay of the last day, a live summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline.settings import OfflineSettings

if TYPE_CHECKING:
    from offline.pipeline import TrainingParams


def _stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as response:
        return dict(json.loads(response.read()))


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode}; see {log}")
        try:
            _stats(port)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the worker did not start within {timeout:.0f} s; see {log}")


def run_demo(params: TrainingParams, rate: float | None, progress: bool) -> None:
    """Run the whole product on the bundled YOOCHOOSE sample and print what it did."""
    from modelkit.artifact import current_version, load_artifact
    from offline.loaders import load_events
    from offline.pipeline import evaluate_artifact, evaluate_baselines, train_version
    from offline.prepare import prepare
    from stream_worker.broker import EmbeddedBroker, create_topics, free_port
    from stream_worker.replay import replay_events

    settings = OfflineSettings()
    work = settings.work_dir / "demo"
    prepared = work / "prepared"
    models_dir = work / "models"
    print(f"[1/5] prepare {settings.demo_data} -> {prepared}", flush=True)
    prepare(settings.demo_data, "session-tsv", prepared)
    train = load_events(prepared / "train_full.tsv", "session-tsv")
    test = load_events(prepared / "test.tsv", "session-tsv")
    if current_version(models_dir) is None:
        family = type(params).__name__.removesuffix("Params")
        print(f"[2/5] train {family} on {len(train)} clicks -> {models_dir}", flush=True)
        train_version(train, params, models_dir, progress=progress)
    else:
        print(f"[2/5] model {current_version(models_dir)} already in {models_dir} (delete it to retrain)", flush=True)
    artifact = load_artifact(models_dir / "current")
    offline, _ = evaluate_artifact(artifact, test, train)
    baselines, _ = evaluate_baselines(train, test)
    print("      offline, last day of the sample (every next click, full catalogue):")
    for name, metrics in {**baselines, artifact.manifest.model_family: offline}.items():
        print(f"      {name:<8} Recall@20 {metrics['recall@20']:.4f}  MRR@20 {metrics['mrr@20']:.4f}")

    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        print(f"[3/5] embedded Kafka broker (tansu) on {broker.bootstrap}", flush=True)
        web_port = free_port()
        data_dir = work / f"worker-{broker.port}-{int(time.time())}"  # RocksDB belongs to this broker instance
        env = {**os.environ, "STREAMREC_BOOTSTRAP_SERVERS": broker.bootstrap, "STREAMREC_MODELS_DIR": str(models_dir),
               "STREAMREC_DATA_DIR": str(data_dir), "STREAMREC_WEB_PORT": str(web_port),
               "STREAMREC_METRICS_INTERVAL_S": "2"}
        create_topics(broker.bootstrap, {"clicks": 4})
        log = work / "worker.log"
        with open(log, "wb") as log_file:
            worker = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "worker"], env=env,
                                      stdout=log_file, stderr=subprocess.STDOUT)
            try:
                _wait_ready(worker, web_port, log)
                print(f"[4/5] worker up (stats: http://127.0.0.1:{web_port}/stats, log {log})", flush=True)
                _replay_with_live_summary(test, broker.bootstrap, web_port, rate, progress, replay_events)
                stats = _stats(web_port)
            finally:
                worker.terminate()
                worker.wait(30)
    online = stats["online"].get(artifact.version, {}).get("since_start", {})
    print(f"[5/5] {stats['predictions']} predictions for {len(test)} clicks, {stats['dead_letters']} dead letters")
    if online:
        print(f"      online  Recall@20 {online['recall@20']:.4f}  MRR@20 {online['mrr@20']:.4f}  "
              f"({online['n']} next clicks)   offline Recall@20 {offline['recall@20']:.4f}  "
              f"MRR@20 {offline['mrr@20']:.4f}")


def _replay_with_live_summary(test: Any, bootstrap: str, web_port: int, rate: float | None, progress: bool,
                              replay_events: Any) -> None:
    done = threading.Event()
    failure: list[BaseException] = []

    def replay() -> None:
        try:
            replay_events(test, bootstrap, "clicks", rate=rate, progress=False)
        except BaseException as error:  # reported below, in the main thread
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=replay, daemon=True).start()
    print(f"      replaying {len(test)} clicks of the last day" + (f" at {rate:.0f}/s" if rate else ""), flush=True)
    last_line = ""
    while True:
        finished = done.wait(2.0)
        stats = _stats(web_port)
        online = stats["online"].get(stats["model_version"], {}).get("since_start", {})
        line = (f"      {stats['events']:>6} clicks  {stats['predictions']:>6} predictions  "
                f"lag {stats['lag_total']:>5}  online Recall@20 {online.get('recall@20', 0):.3f}  "
                f"MRR@20 {online.get('mrr@20', 0):.3f}")
        if line != last_line and (progress or finished):
            print(line, flush=True)
            last_line = line
        if finished:
            if stats["events"] >= len(test) and stats["lag_total"] == 0:
                break
            time.sleep(0.5)
    if failure:
        raise failure[0]
