"""The retrain cycle: gate refuses a worse candidate and accepts a genuine one, no leak, retention, CLI, loop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelkit.artifact import ArtifactError, current_version, load_artifact
from modelkit.registry import REJECTED_DIR, RetrainError, apply_retention, list_versions, rollback
from offline.cleaning import SECONDS_PER_DAY, clean
from offline.hyperparams import GRU4RecParams
from offline.pipeline import data_digest
from offline.retrain import CycleLoop, FileSource, TopicSource, gate_decision, prepare_window, retrain_cycle
from schemas import ModelManifest
from streamrec.cli import main
from tests.support.artifacts import random_artifact

T0 = 1_700_000_000.0
PARAMS = GRU4RecParams(layers=(16,), batch_size=16, n_sample=64, n_epochs=2, steps_per_call=16, seed=1)
TINY = ["--layers", "16", "--batch-size", "16", "--n-sample", "64", "--epochs", "2", "--seed", "1"]


def clicks(n_sessions: int, days: float, seed: int, start: float = T0, n_items: int = 40,
           new_items: int = 0, step: int = 1) -> pd.DataFrame:
    """Sessions spread over ``days`` following a noisy item chain i -> i+step (new items: a chain of their own)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float]] = []
    for s in range(n_sessions):
        t = start + rng.random() * (days * SECONDS_PER_DAY - 3600)
        chain, size = ("n", new_items) if new_items and rng.random() < 0.15 else ("i", n_items)
        item = int(rng.integers(size))
        for _ in range(int(rng.integers(2, 9))):
            rows.append((f"{seed}-{s}", f"{chain}{item}", t))
            t += 30.0
            item = (item + step) % size if rng.random() < 0.9 else int(rng.integers(size))
    return pd.DataFrame(rows, columns=["session_id", "item_id", "timestamp"])


def write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    frame.rename(columns={"session_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"}).to_csv(
        path, sep="\t", index=False, float_format="%.3f")
    return path


def cycle(path: Path, models: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"window_days": 4.0, "gate_days": 1.0, "progress": False, **kwargs}
    return retrain_cycle(FileSource((path,), "session-tsv"), models, PARAMS, **options)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Path]:
    """A models directory whose current version was trained by one cycle on good data (days 0-4)."""
    base = tmp_path_factory.mktemp("first")
    data = write_tsv(clicks(900, days=4, seed=1), base / "days0-4.tsv")
    report = cycle(data, base / "models")
    return base / "models", report, data


def _copy(models: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(models, target, symlinks=True)
    return target


def test_first_cycle_publishes_without_a_current_model(first: tuple[Path, Any, Path]) -> None:
    models, report, _ = first
    assert report.decision == "accepted" and report.reason == "no current model"
    assert current_version(models) == report.version == report.current_version
    manifest = load_artifact(models / "current").manifest
    assert manifest.parent_version is None and manifest.gate is not None
    assert manifest.gate["decision"] == "accepted" and manifest.gate["current_mrr@20"] is None
    assert report.candidate_metrics["mrr@20"] > 0.3  # the chain is learnable: the gate has something to lose


def test_gate_refuses_a_worse_candidate_and_current_stays(first: tuple[Path, Any, Path], tmp_path: Path) -> None:
    models = _copy(first[0], tmp_path)
    before = current_version(models)
    good = clicks(900, days=4, seed=2, start=T0 + 4 * SECONDS_PER_DAY)
    gate_start = good["timestamp"].max() - SECONDS_PER_DAY
    training = good["timestamp"] < gate_start - 3600  # destroy the sequences of (nearly) all training sessions
    good.loc[training, "item_id"] = np.random.default_rng(0).permutation(good.loc[training, "item_id"].to_numpy())
    published: list[ModelManifest] = []
    report = cycle(write_tsv(good, tmp_path / "shuffled.tsv"), models, warm_start=False, publish=published.append)

    assert report.decision == "rejected" and not report.accepted
    assert current_version(models) == before == report.current_version and published == []
    assert report.path == models / REJECTED_DIR / report.version and report.version not in list_versions(models)
    assert report.current_metrics is not None
    assert report.candidate_metrics["mrr@20"] < report.current_metrics["mrr@20"] - 0.02
    gate = load_artifact(report.path).manifest.gate
    assert gate is not None and gate["decision"] == "rejected" and gate["compared_with"] == before
    assert gate["candidate_mrr@20"] == report.candidate_metrics["mrr@20"]
    assert gate["current_recall@20"] == report.current_metrics["recall@20"]


def test_gate_accepts_a_genuine_warm_started_candidate_with_new_items(
    first: tuple[Path, Any, Path], tmp_path: Path
) -> None:
    models = _copy(first[0], tmp_path)
    before = load_artifact(models / "current")
    # The click pattern drifted (i -> i+2) and 5 new items appeared: retraining should win clearly.
    data = write_tsv(clicks(900, days=4, seed=3, start=T0 + 4 * SECONDS_PER_DAY, new_items=5, step=2),
                     tmp_path / "next.tsv")
    published: list[ModelManifest] = []
    report = cycle(data, models, publish=published.append)

    assert report.decision == "accepted", report.reason
    assert current_version(models) == report.version != before.version
    assert [m.version for m in published] == [report.version]
    after = load_artifact(models / "current")
    assert after.manifest.parent_version == before.version == report.parent_version
    assert report.items_added == 5 and after.manifest.n_items == before.manifest.n_items + 5
    assert set(before.item_index.ids) < set(after.item_index.ids)
    assert after.manifest.gate is not None and after.manifest.gate["warm_start"] is True
    assert published[0] == after.manifest  # the message carries the manifest as written
    assert report.current_metrics is not None
    assert report.candidate_metrics["mrr@20"] > report.current_metrics["mrr@20"] + 0.3
    # Compared on the same events (items both know); the candidate also scores the new items' events.
    assert report.candidate_metrics["n_predictions"] == report.current_metrics["n_predictions"]
    assert report.candidate_full_metrics["n_predictions"] > report.candidate_metrics["n_predictions"]
    assert after.manifest.metrics["gate_mrr@20"] == report.candidate_full_metrics["mrr@20"]


def test_no_gate_event_is_trained_on(first: tuple[Path, Any, Path]) -> None:
    models, report, data = first
    manifest = load_artifact(models / report.version).manifest
    gate = manifest.gate
    assert gate is not None and isinstance(gate["gate_start"], float)
    assert manifest.training_window.end < gate["gate_start"] == report.gate_start
    # Rebuild the training data independently: clean the window, keep sessions that end before the gate.
    frame = pd.read_csv(data, sep="\t", dtype={"SessionId": str, "ItemId": str})
    frame = frame.rename(columns={"SessionId": "session_id", "ItemId": "item_id", "Time": "timestamp"})
    cleaned = clean(frame[frame["timestamp"] >= report.window_start])
    session_end = cleaned.groupby("session_id")["timestamp"].transform("max")
    expected_train = cleaned[session_end < report.gate_start]
    gate_events = cleaned[session_end >= report.gate_start]
    assert len(gate_events) > 100 and manifest.data_digest == data_digest(expected_train)
    assert manifest.data_digest != data_digest(pd.concat([expected_train, gate_events.iloc[:1]]))

    prepared = prepare_window(frame, report.window_start, report.window_end, report.gate_start)
    assert data_digest(prepared.train) == manifest.data_digest
    assert set(prepared.train["session_id"]).isdisjoint(prepared.gate["session_id"])
    assert prepared.train["timestamp"].max() < report.gate_start <= prepared.gate["timestamp"].max()


def test_window_relative_to_now_leaves_out_later_events(tmp_path: Path) -> None:
    frame = clicks(900, days=4, seed=5)
    now = T0 + 3.0 * SECONDS_PER_DAY
    report = cycle(write_tsv(frame, tmp_path / "d.tsv"), tmp_path / "models", window_days=2.0, now=now)
    manifest = load_artifact(tmp_path / "models" / "current").manifest
    assert report.window_end == now and report.gate_start == now - SECONDS_PER_DAY
    assert now - 2 * SECONDS_PER_DAY <= manifest.training_window.start
    assert manifest.training_window.end < report.gate_start
    in_window = frame[(frame["timestamp"] >= now - 2 * SECONDS_PER_DAY) & (frame["timestamp"] <= now)]
    assert report.window_events == len(in_window) < len(frame)


def test_gate_decision_rule() -> None:
    current = {"mrr@20": 0.30, "recall@20": 0.50, "n_predictions": 100.0}
    assert gate_decision({"mrr@20": 0.281, "recall@20": 0.49, "n_predictions": 90.0}, current, 0.02)[0]
    assert not gate_decision({"mrr@20": 0.279, "recall@20": 0.60, "n_predictions": 90.0}, current, 0.02)[0]
    assert not gate_decision({"mrr@20": 0.40, "recall@20": 0.47, "n_predictions": 90.0}, current, 0.02)[0]
    assert not gate_decision({"mrr@20": 0.0, "recall@20": 0.0, "n_predictions": 0.0}, current, 0.02)[0]
    assert gate_decision({"mrr@20": 0.0, "recall@20": 0.0, "n_predictions": 0.0}, None, 0.02) == (
        True, "no current model")


# ------------------------------------------------------------------ retention and rollback (no training)


def _version(models: Path, name: str, created: float, directory: Path | None = None) -> None:
    random_artifact(directory or models, name, items=["a", "b", "c"], layers=(4,), popularity=np.ones(3, np.int64),
                    created_at=created, make_current=False)


def test_retention_keeps_the_newest_current_and_the_one_it_replaced(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for i, name in enumerate(["v1", "v2", "v3", "v4", "v5"]):
        _version(models, name, created=100.0 + i)
    for i in range(3):
        _version(models, f"r{i}", created=200.0 + i, directory=models / REJECTED_DIR)
    rollback(models, "v4")
    rollback(models, "v2")  # current v2 replaced v4
    assert apply_retention(models, keep=2) == ["v1", "v3", f"{REJECTED_DIR}/r0"]
    assert list_versions(models) == ["v2", "v4", "v5"] and current_version(models) == "v2"
    assert list_versions(models / REJECTED_DIR) == ["r1", "r2"]
    assert not [p for p in models.iterdir() if p.name.startswith(".deleting")]


def test_rollback_moves_current_and_refuses_unknown_or_broken_versions(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for i, name in enumerate(["v1", "v2", "v3"]):
        _version(models, name, created=float(i))
    _version(models, "r1", created=9.0, directory=models / REJECTED_DIR)
    sent: list[ModelManifest] = []
    assert rollback(models, "v3", sent.append) == (None, True)
    assert rollback(models, "v1", sent.append) == ("v3", True)
    assert current_version(models) == "v1" and [m.version for m in sent] == ["v3", "v1"]
    for unknown in ("v9", "r1", "current", "../v2"):
        with pytest.raises(ValueError, match="no model version"):
            rollback(models, unknown, sent.append)
    (models / "v2" / "weights.npz").write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match="weights"):
        rollback(models, "v2", sent.append)
    assert current_version(models) == "v1" and len(sent) == 2


def test_overlapping_cycles_are_refused(tmp_path: Path) -> None:
    import fcntl

    models = tmp_path / "models"
    _version(models, "v1", created=1.0)
    with open(models / ".retrain.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RetrainError, match="holds the lock"):
            rollback(models, "v1")


def test_loop_survives_a_failed_cycle_and_stops() -> None:
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ValueError("broken input")

    loop = CycleLoop(flaky, interval_s=0.05, max_cycles=3)
    assert loop.run() == 1 and len(calls) == 3 and not loop.last_failed and loop.last_error == "broken input"
    assert calls[2] - calls[1] >= 0.04

    endless = CycleLoop(lambda: calls.append(0.0), interval_s=3600)
    threading.Timer(0.2, endless.stop).start()
    started = time.monotonic()
    endless.run()
    assert endless.cycles == 1 and time.monotonic() - started < 5


# ------------------------------------------------------------------ command line


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("streamrec")]
    assert len(err) == 1, err
    return err[0]


def test_cli_every_runs_two_cycles_then_models_list_and_rollback(
    first: tuple[Path, Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = first[2]
    models = tmp_path / "models"
    argv = ["--no-progress", "retrain", "--input", str(data), "--format", "session-tsv", "--out", str(models),
            "--window-days", "4", "--every", "1s", "--max-cycles", "2", "--json", *TINY]
    started = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - started >= 1.0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(reports) == 2 and reports[0]["parent_version"] is None
    assert reports[1]["parent_version"] == reports[0]["version"]
    assert reports[0]["decision"] == "accepted" and reports[1]["decision"] in ("accepted", "rejected")

    assert main(["models", "list", "--dir", str(models), "--rejected", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["version"] for row in rows} == {r["version"] for r in reports}
    assert [row["current"] for row in rows].count(True) == 1
    assert all(row["decision"] in ("accepted", "rejected") and row["mrr@20"] > 0 for row in rows)
    assert main(["models", "list", "--dir", str(models)]) == 0
    assert any(line.startswith("* ") for line in capsys.readouterr().out.splitlines())

    assert main(["models", "rollback", reports[0]["version"], "--dir", str(models)]) == 0
    assert current_version(models) == reports[0]["version"]
    assert capsys.readouterr().out.strip().endswith(f"-> {reports[0]['version']}")


def test_cli_loop_stops_cleanly_on_ctrl_c(first: tuple[Path, Any, Path], tmp_path: Path) -> None:
    models = tmp_path / "models"
    argv = ["--no-progress", "retrain", "--input", str(first[2]), "--format", "session-tsv", "--out", str(models),
            "--window-days", "4", "--every", "1h", "--json", *TINY]
    running = threading.Event()
    returned = threading.Event()

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while current_version(models) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        if running.is_set() and not returned.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    running.set()
    started = time.monotonic()
    try:
        code = main(argv)
    finally:
        returned.set()
    assert code == 0 and time.monotonic() - started < 60
    assert current_version(models) is not None
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp")]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_cli_retrain_from_topic_publishes_a_model_update(
    broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_worker.replay import replay_events
    from stream_worker.tail import read_topic
    from stream_worker.topic_reader import click_window_reader

    topic, updates = f"clicks-{uuid.uuid4().hex[:8]}", f"updates-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("STREAMREC_MODEL_UPDATES_TOPIC", updates)
    replay_events(clicks(900, days=4, seed=7), broker.bootstrap, topic, progress=False, partitions=4)
    models = tmp_path / "models"
    argv = ["--no-progress", "retrain", "--from-topic", topic, "--bootstrap", broker.bootstrap, "--out", str(models),
            "--window-days", "4", "--json", *TINY]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"] == "accepted" and report["message_sent"] is True
    assert report["read"]["valid"] == report["window_events"] and report["read"]["bad_total"] == 0
    messages = read_topic(broker.bootstrap, updates, expected=1, idle_timeout_s=10)
    assert len(messages) == 1 and messages[0].key == report["version"].encode()
    assert messages[0].value is not None
    assert ModelManifest.model_validate_json(messages[0].value) == load_artifact(models / "current").manifest

    # Same source object through the API, windowed by `now`: only the first two days are read.
    source = TopicSource(topic, click_window_reader(broker.bootstrap, progress=False))
    with pytest.raises(ValueError, match="no click events"):
        retrain_cycle(source, models, PARAMS, window_days=2.0, now=T0 - 10 * SECONDS_PER_DAY)


@pytest.mark.parametrize("argv, fragment", [
    (["retrain", "--input", "x.tsv"], "--input needs --format"),
    (["retrain", "--input", "x.tsv", "--format", "session-tsv", "--from-topic"], "not allowed with"),
    (["retrain", "--input", "missing.tsv", "--format", "session-tsv"], "missing.tsv: file not found"),
    (["retrain", "--input", "missing.tsv", "--format", "session-tsv", "--every", "1s"], "file not found"),
    (["retrain", "--format", "session-tsv"], "--format applies only"),
    (["retrain", "--window-days", "1", "--gate-days", "1", "--input", "{data}", "--format", "session-tsv"],
     "--window-days (1) must be larger"),
    (["retrain", "--window-days", "-2"], "--window-days"),
    (["retrain", "--margin", "x"], "--margin"),
    (["retrain", "--every", "soon"], "--every"),
    (["retrain", "--keep", "0"], "--keep"),
    (["retrain", "--from-topic", "t", "--bootstrap", "nohost"], "bootstrap"),
    (["models", "rollback", "nope", "--dir", "{models}"], "no model version 'nope'"),
    (["models", "list", "--dir", "/nonexistent/models"], "no models directory"),
    (["models"], "required"),
])
def test_cli_errors_are_one_line_exit_2(
    argv: list[str], fragment: str, first: tuple[Path, Any, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(data=first[2], models=first[0]) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    assert fragment in _one_error_line(capsys)


SASREC_TINY = ["--hidden", "8", "--blocks", "1", "--max-len", "8", "--heads", "1", "--epochs", "1",
               "--batch-size", "32", "--valid-fraction", "0"]


def test_cli_retrain_of_a_sasrec_current_stays_sasrec_warm_started(
    first: tuple[Path, Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    random_artifact(models, "sasrec-v0", family="sasrec", items=40, layers=(8,), max_len=8, n_heads=1, seed=2)
    argv = ["--no-progress", "retrain", "--input", str(first[2]), "--format", "session-tsv", "--out", str(models),
            "--window-days", "4", "--margin", "1"]
    assert main([*argv, "--layers", "8"]) == 2  # a gru4rec flag for a sasrec current: one line, nothing trained
    assert "--layers applies to gru4rec, not sasrec" in _one_error_line(capsys)
    assert main([*argv, "--json", *SASREC_TINY]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "sasrec" and report["decision"] == "accepted"
    assert report["parent_version"] == "sasrec-v0"  # same sizes: warm-started
    manifest = load_artifact(models / "current").manifest
    assert manifest.model_family == "sasrec" and manifest.version == report["version"]
    assert (manifest.hidden_size, manifest.n_layers, manifest.hyperparameters["max_len"]) == (8, 1, 8)


def test_a_cycle_of_another_family_than_current_trains_from_scratch(
    first: tuple[Path, Any, Path], tmp_path: Path
) -> None:
    from offline.sasrec_params import SASRecParams

    models = _copy(first[0], tmp_path)
    params = SASRecParams(hidden_size=8, n_blocks=1, max_len=8, n_epochs=1, batch_size=32, valid_fraction=0.0)
    report = retrain_cycle(FileSource((first[2],), "session-tsv"), models, params, window_days=4.0, margin=1.0,
                           progress=False)
    assert report.family == "sasrec" and report.parent_version is None and report.accepted
    assert report.current_metrics is not None  # still gated against the gru4rec current
    assert load_artifact(models / "current").manifest.model_family == "sasrec"
