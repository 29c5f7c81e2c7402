"""Replaying click logs into the embedded broker and reading topics back (replay, produce_raw, tail)."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.loaders import load_events
from schemas.events import ClickEvent
from stream_worker.broker import EmbeddedBroker
from stream_worker.replay import click_messages, event_id, produce_raw, replay_events, time_ordered
from stream_worker.tail import read_topic
from streamrec.cli import main


def _topic() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


def _interleaved_tsv(path: Path, n_sessions: int = 40, seed: int = 0) -> Path:
    """Sessions overlapping in time, rows shuffled in the file, some equal timestamps (ties keep file order)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        start = 1_600_000_000 + int(rng.integers(0, 600))
        for k in range(int(rng.integers(1, 7))):
            rows.append((f"s{s}", str(int(rng.integers(100))), float(start + 10 * k + int(rng.integers(0, 3)))))
    order = rng.permutation(len(rows))
    lines = ["SessionId\tItemId\tTime"] + [f"{rows[i][0]}\t{rows[i][1]}\t{rows[i][2]!r}" for i in order]
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected_sequences(frame: pd.DataFrame) -> dict[str, list[tuple[str, float]]]:
    ordered = frame.sort_values("timestamp", kind="stable")
    sequences: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for session, item, stamp in zip(ordered["session_id"], ordered["item_id"], ordered["timestamp"], strict=True):
        sequences[session].append((item, float(stamp)))
    return sequences


def test_replay_then_read_back_in_time_order_per_session(broker: EmbeddedBroker, tmp_path: Path) -> None:
    frame = load_events(_interleaved_tsv(tmp_path / "clicks.tsv"), "session-tsv")
    topic = _topic()
    sent = replay_events(frame, broker.client_config(), topic, progress=False, partitions=4)
    assert sent == len(frame)
    records = read_topic(broker.bootstrap, topic, expected=sent, idle_timeout_s=10)
    assert len(records) == sent
    sequences: dict[str, list[tuple[str, float]]] = defaultdict(list)
    partition_of: dict[str, int] = {}
    last_stamp: dict[int, float] = {}
    for record in records:
        assert record.value is not None and record.key is not None
        event = ClickEvent.model_validate_json(record.value)
        assert record.key == event.session_id.encode()
        assert event.event_id == event_id(event.session_id, len(sequences[event.session_id]))
        assert partition_of.setdefault(event.session_id, record.partition) == record.partition
        assert event.timestamp >= last_stamp.get(record.partition, 0.0)  # produced in global time order
        last_stamp[record.partition] = event.timestamp
        sequences[event.session_id].append((event.item_id, event.timestamp))
    assert sequences == _expected_sequences(frame)
    assert len(set(partition_of.values())) > 1  # keys spread over the 4 partitions


def test_event_ids_are_deterministic_and_bounded() -> None:
    frame = pd.DataFrame({"session_id": ["b", "a", "b", "a"], "item_id": ["1", "2", "3", "4"],
                          "timestamp": [5.0, 1.0, 1.0, 9.0]})
    first = [json.loads(value)["event_id"] for _, value, _ in click_messages(time_ordered(frame))]
    again = [json.loads(value)["event_id"] for _, value, _ in click_messages(time_ordered(frame))]
    assert first == again == ["a:0", "b:0", "b:1", "a:1"]
    long_id = event_id("x" * 256, 3)
    assert len(long_id) <= 256 and long_id == event_id("x" * 256, 3) != event_id("x" * 256, 4)


def test_invalid_events_are_refused_before_anything_is_sent() -> None:
    frame = pd.DataFrame({"session_id": ["a", "a"], "item_id": ["1", "2"], "timestamp": [1.0, -5.0]})
    with pytest.raises(ValueError, match="timestamp"):
        replay_events(frame, "localhost:1", "never", progress=False)  # no broker there: fails before connecting


def test_rate_is_respected(broker: EmbeddedBroker) -> None:
    frame = pd.DataFrame({"session_id": [f"s{i % 7}" for i in range(200)], "item_id": ["1"] * 200,
                          "timestamp": np.arange(200, dtype=np.float64)})
    started = time.monotonic()
    assert replay_events(frame, broker.bootstrap, _topic(), rate=1000, progress=False) == 200
    assert time.monotonic() - started >= 0.8 * 199 / 1000


def test_speedup_keeps_the_original_gaps(broker: EmbeddedBroker) -> None:
    frame = pd.DataFrame({"session_id": ["a", "b", "a", "b", "a"], "item_id": ["1", "2", "3", "4", "5"],
                          "timestamp": [1000.0, 1010.0, 1020.0, 1030.0, 1050.0]})  # 50 s of log
    started = time.monotonic()
    assert replay_events(frame, broker.bootstrap, _topic(), speedup=200, progress=False) == 5
    assert time.monotonic() - started >= 0.8 * 50 / 200


def test_produce_raw_bytes_come_back_unchanged(broker: EmbeddedBroker) -> None:
    topic = _topic()
    records = [(b"s1", b"\xff\xfe not json"), (None, b"{}"), (b"s2", None), (b"s3", b"x" * 100_000),
               (b"s1", b'{"schema_version":1,"session_id":"s1"}')]
    assert produce_raw(broker.bootstrap, topic, records, partition=0) == len(records)
    got = read_topic(broker.bootstrap, topic, expected=len(records), idle_timeout_s=10)
    assert [(r.key, r.value) for r in got] == records
    assert [r.offset for r in got] == list(range(len(records)))


def test_read_topic_of_a_missing_topic_is_empty_after_the_idle_timeout(broker: EmbeddedBroker) -> None:
    started = time.monotonic()
    assert read_topic(broker.bootstrap, _topic(), idle_timeout_s=0.5) == []
    assert time.monotonic() - started < 5


def test_cli_replay_limit_and_tail(broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _interleaved_tsv(tmp_path / "clicks.tsv", seed=3)
    topic = _topic()
    args = ["--no-progress", "replay", str(path), "--format", "session-tsv", "--bootstrap", broker.bootstrap,
            "--topic", topic, "--limit", "7"]
    assert main(args) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"sent 7 events to {topic}")
    records = read_topic(broker.bootstrap, topic, idle_timeout_s=1.0)  # no `expected`: also proves nothing extra
    stamps = sorted(ClickEvent.model_validate_json(r.value or b"").timestamp for r in records)
    frame = load_events(path, "session-tsv")
    assert stamps == sorted(frame["timestamp"].to_numpy())[:7]
    assert main(["tail", topic, "--bootstrap", broker.bootstrap, "--from-beginning", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(ClickEvent.model_validate_json(line) for line in lines)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["replay", "{missing}", "--format", "session-tsv"], "file not found"),
        (["replay", "{missing}", "--format", "session-tsv", "--rate", "-3"], "--rate"),
        (["replay", "{missing}", "--format", "nope"], "--format"),
        (["tail", "clicks", "--timeout", "soon"], "--timeout"),
        (["tail", "clicks", "--bootstrap", "no-port-here"], "bootstrap"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [arg.replace("{missing}", str(tmp_path / "missing.tsv")) for arg in args]
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit from the parser
        code = main(args)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("streamrec")]
    assert len(err) == 1 and needle in err[0], err
