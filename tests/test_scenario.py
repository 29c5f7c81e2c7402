"""Issue-4 scenarios end to end on the real broker with the worker running: a retrain cycle read from the
clicks topic swaps the serving model mid-stream; after a drift the retrained model's online recall is far
above the stale one's and new items get recommended."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline.hyperparams import GRU4RecParams
from offline.loaders import load_events
from offline.retrain import TopicSource, retrain_cycle
from schemas import OnlineMetrics
from stream_worker.broker import create_topics
from stream_worker.model_updates import kafka_publisher
from stream_worker.online_metrics import summary
from stream_worker.replay import replay_events
from stream_worker.tail import read_topic
from stream_worker.topic_reader import click_window_reader
from tests.support.streaming import WorkerProcess

DAY = 86_400.0
QUICK = GRU4RecParams(n_epochs=2)
SMALL = GRU4RecParams(layers=(32,), batch_size=32, n_sample=128, n_epochs=8)


def _by_day(frame: pd.DataFrame) -> list[pd.DataFrame]:
    day = ((frame["timestamp"] - frame["timestamp"].min()) // DAY).astype(int)
    return [frame[day == d] for d in range(int(day.max()) + 1)]


def _cycle(worker: WorkerProcess, models: Path, bootstrap: str, params: GRU4RecParams, days: float) -> Any:
    return retrain_cycle(
        TopicSource(worker.topic("clicks"), click_window_reader(bootstrap, progress=False)), models, params,
        window_days=days, gate_days=1.0, publish=kafka_publisher(bootstrap, worker.topic("model_updates")),
        progress=False,
    )


def test_retrain_from_the_topic_swaps_the_running_worker(broker: Any, rsc15_dir: Path, tmp_path: Path) -> None:
    days = _by_day(load_events(rsc15_dir / "yoochoose-clicks-100k_train_full.txt", "session-tsv"))
    models = tmp_path / "models"
    worker = WorkerProcess(broker.bootstrap, models, tmp_path / "rocksdb", "scenario", tmp_path / "worker.log",
                           metrics_interval_s=1.0)
    create_topics(broker.bootstrap, {worker.topic("clicks"): 4})
    first = pd.concat(days[:4])
    replay_events(first, broker.bootstrap, worker.topic("clicks"), progress=False)
    bootstrap_cycle = _cycle(worker, models, broker.bootstrap, QUICK, days=4)
    assert bootstrap_cycle.accepted and bootstrap_cycle.previous_version is None
    worker.start()
    try:
        worker.wait_until(lambda s: s["events"] >= len(first), timeout=180, what="days 1-4 consumed")
        replay_events(days[4], broker.bootstrap, worker.topic("clicks"), speedup=DAY, progress=False)
        worker.wait_until(lambda s: s["events"] >= len(first) + len(days[4]), timeout=120, what="day 5 consumed")
        cycle = _cycle(worker, models, broker.bootstrap, QUICK, days=5)
        assert cycle.accepted, cycle.reason
        assert cycle.parent_version == bootstrap_cycle.version and cycle.window_end > bootstrap_cycle.window_end
        worker.wait_until(lambda s: s["model_version"] == cycle.version, timeout=60, what="swap to the retrained model")
        total = len(first) + len(days[4]) + len(days[5])
        replay_events(days[5], broker.bootstrap, worker.topic("clicks"), speedup=DAY, progress=False)
        stats = worker.wait_until(lambda s: s["events"] >= total and s["lag_total"] == 0, timeout=120,
                                  what="day 6 consumed")
        time.sleep(2.5)  # one more metrics publication
    finally:
        worker.stop()
    assert stats["predictions"] == total and stats["model_swaps"] == 1
    reports: dict[str, OnlineMetrics] = {}
    for record in read_topic(broker.bootstrap, worker.topic("metrics"), idle_timeout_s=3.0):
        report = OnlineMetrics.model_validate_json(record.value or b"")
        if report.model_version not in reports or report.produced_at > reports[report.model_version].produced_at:
            reports[report.model_version] = report
    assert set(reports) == {bootstrap_cycle.version, cycle.version}
    for version, report in reports.items():
        online = summary(report.since_start)
        assert online["n"] > 1000 and 0.4 < online["recall@20"] < 0.9, (version, online)


def _drifting_sessions(rng: np.random.Generator, day: int, n_sessions: int, drifted: bool) -> pd.DataFrame:
    """Before the drift items 0-49 follow i -> i+1; after it items 0-59 (50-59 new) follow i -> i+7."""
    n_items, step = (60, 7) if drifted else (50, 1)
    rows = []
    for s in range(n_sessions):
        start = 1_400_000_000.0 + day * DAY + s * (DAY / n_sessions)
        item = int(rng.integers(n_items))
        for position in range(int(rng.integers(4, 9))):
            rows.append((f"d{day}s{s}", str(item), start + position * 10.0))
            item = (item + step) % n_items if rng.random() < 0.9 else int(rng.integers(n_items))
    return pd.DataFrame(rows, columns=["session_id", "item_id", "timestamp"])


def test_drift_retrained_model_beats_the_stale_one_and_recommends_new_items(broker: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    days = [_drifting_sessions(rng, day, 300, drifted=day >= 3) for day in range(6)]
    models = tmp_path / "models"
    worker = WorkerProcess(broker.bootstrap, models, tmp_path / "rocksdb", "drift", tmp_path / "worker.log")
    create_topics(broker.bootstrap, {worker.topic("clicks"): 4})
    replay_events(pd.concat(days[:3]), broker.bootstrap, worker.topic("clicks"), progress=False)
    stale = _cycle(worker, models, broker.bootstrap, SMALL, days=3)
    assert stale.accepted
    worker.start()
    try:
        seen = sum(len(d) for d in days[:3])
        worker.wait_until(lambda s: s["events"] >= seen, what="pre-drift days consumed")
        before = worker.stats()["online"][stale.version]["since_start"]
        replay_events(pd.concat(days[3:5]), broker.bootstrap, worker.topic("clicks"), progress=False)
        seen += len(days[3]) + len(days[4])
        worker.wait_until(lambda s: s["events"] >= seen, what="drifted days consumed by the stale model")
        after = worker.stats()["online"][stale.version]["since_start"]
        fresh = _cycle(worker, models, broker.bootstrap, SMALL, days=5)
        assert fresh.accepted and fresh.items_added == 10, fresh.reason
        worker.wait_until(lambda s: s["model_version"] == fresh.version, what="swap to the retrained model")
        replay_events(days[5], broker.bootstrap, worker.topic("clicks"), progress=False)
        seen += len(days[5])
        stats = worker.wait_until(lambda s: s["events"] >= seen and s["lag_total"] == 0, what="last day consumed")
    finally:
        worker.stop()
    # Online Recall@20 on drifted clicks: the stale model (days 4-5) against the retrained one (day 6).
    stale_hits = after["recall@20"] * after["n"] - before["recall@20"] * before["n"]
    stale_recall = stale_hits / (after["n"] - before["n"])
    fresh_recall = stats["online"][fresh.version]["since_start"]["recall@20"]
    assert fresh_recall > stale_recall + 0.3, (stale_recall, fresh_recall)
    new_items = {str(i) for i in range(50, 60)}
    predictions = [json.loads(r.value or b"") for r in read_topic(broker.bootstrap, worker.topic("predictions"),
                                                                   idle_timeout_s=3.0)]
    by_version: dict[str, set[str]] = {p["model_version"]: set() for p in predictions}
    for p in predictions:
        by_version[p["model_version"]].update(p["items"])
    assert not by_version[stale.version] & new_items  # the stale model cannot know them
    assert by_version[fresh.version] & new_items == new_items  # all new items are recommended after the retrain
