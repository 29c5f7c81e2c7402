"""The worker ties its local table data to the broker it came from: a memory broker restarted empty makes it
start fresh (once, with one log line) instead of dying with ConsistencyError or stalling; a broker that kept its
data never costs it its state."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from stream_worker.broker_identity import (
    IDENTITY_FILE,
    BrokerIdentity,
    broker_identity,
    marker_topic,
    match_data_dir,
    read_marker,
    record_identity,
    recorded_identity,
    write_marker,
)
from stream_worker.settings import WorkerSettings
from tests.support.artifacts import random_artifact
from tests.support.streaming import WorkerProcess

DROPPED = "is not the one the local table data came from"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("identity-models")
    random_artifact(directory, "id-v1", noise=0.5)
    return directory


def _tables(data_dir: Path) -> Path:
    tables = data_dir / "v1" / "tables"
    (tables / "sessions-0.db").mkdir(parents=True)
    (tables / "sessions-0.db" / "CURRENT").write_text("x")
    return tables


OLD = BrokerIdentity("app-broker-identity", "a" * 32, "tansu_cluster")
NEW = BrokerIdentity("app-broker-identity", "b" * 32, "tansu_cluster")


# ------------------------------------------------------------------------------------------------- unit tests


def test_identity_file_round_trips_atomically(tmp_path: Path) -> None:
    assert recorded_identity(tmp_path) is None
    record_identity(tmp_path, OLD)
    assert recorded_identity(tmp_path) == OLD
    assert [p.name for p in tmp_path.iterdir()] == [IDENTITY_FILE]  # no temporary file left behind
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        recorded_identity(tmp_path)


def test_same_broker_needs_the_same_token_and_tolerates_an_unknown_cluster_id() -> None:
    assert OLD.same_broker(BrokerIdentity(OLD.topic, OLD.token, None))
    assert not OLD.same_broker(NEW)
    assert not OLD.same_broker(BrokerIdentity(OLD.topic, OLD.token, "another-cluster"))
    assert not OLD.same_broker(BrokerIdentity("other-broker-identity", OLD.token, OLD.cluster_id))


def test_data_of_another_broker_is_dropped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tables = _tables(tmp_path)
    record_identity(tmp_path, OLD)
    with caplog.at_level(logging.INFO, logger="stream_worker.broker_identity"):
        assert match_data_dir(tmp_path, tables, NEW, "localhost:9092") is True
    assert not tables.exists() and recorded_identity(tmp_path) == NEW
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert DROPPED in line.getMessage() and "localhost:9092" in line.getMessage() and str(tables) in line.getMessage()
    caplog.clear()
    assert match_data_dir(tmp_path, tables, NEW, "localhost:9092") is False  # the next start: nothing to do
    assert not caplog.records


def test_data_of_the_same_broker_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tables = _tables(tmp_path)
    record_identity(tmp_path, BrokerIdentity(OLD.topic, OLD.token, None))
    with caplog.at_level(logging.INFO, logger="stream_worker.broker_identity"):
        assert match_data_dir(tmp_path, tables, OLD) is False
    assert (tables / "sessions-0.db" / "CURRENT").exists() and not caplog.records
    assert recorded_identity(tmp_path) == OLD  # the cluster id is recorded once known


def test_data_without_a_recorded_identity_is_kept_and_adopted(tmp_path: Path) -> None:
    """A data dir from before the check (or a real Kafka's first start with it): never a reason to drop state."""
    tables = _tables(tmp_path)
    assert match_data_dir(tmp_path, tables, OLD) is False
    assert (tables / "sessions-0.db" / "CURRENT").exists() and recorded_identity(tmp_path) == OLD


def test_an_unreadable_identity_drops_the_data(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    (tmp_path / IDENTITY_FILE).write_text('{"topic": "x"}')
    assert match_data_dir(tmp_path, tables, OLD) is True
    assert not tables.exists() and recorded_identity(tmp_path) == OLD


# ------------------------------------------------------------------------------------------- on the real broker


def test_the_marker_is_written_once_and_its_first_record_stays_the_identity(broker: Any) -> None:
    settings = WorkerSettings(bootstrap_servers=broker.bootstrap, app_id=f"ident-{time.monotonic_ns()}")
    topic = marker_topic(settings.app_id)
    assert read_marker(settings, topic) is None  # no topic: a definite None, and not created by reading
    assert read_marker(settings, topic) is None
    first = broker_identity(settings)
    assert first.topic == topic and len(first.token) == 32 and first.cluster_id == "tansu_cluster"
    write_marker(settings, topic)  # a second worker that raced the first one
    assert read_marker(settings, topic) == first.token
    assert broker_identity(settings) == first


def test_broker_identity_gives_up_on_an_unreachable_broker_with_one_line() -> None:
    from stream_worker.broker import free_port
    from stream_worker.broker_identity import BrokerIdentityError

    settings = WorkerSettings(bootstrap_servers=f"localhost:{free_port()}")
    started = time.monotonic()
    with pytest.raises(BrokerIdentityError, match="broker identity unknown after 2 s") as raised:
        broker_identity(settings, timeout_s=2.0)
    assert time.monotonic() - started < 15 and "\n" not in str(raised.value)


Tick = Callable[[], Coroutine[Any, Any, None]]


class _Signal:
    def __init__(self) -> None:
        self.receivers: list[Callable[..., Coroutine[Any, Any, None]]] = []

    def connect(self, fun: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Coroutine[Any, Any, None]]:
        self.receivers.append(fun)
        return fun


class _App:
    """What watch_broker_identity needs of a faust.App: ``timer``, ``on_partitions_revoked`` and ``crash``."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Tick]] = []
        self.on_partitions_revoked = _Signal()
        self.crashes: list[BaseException] = []

    def timer(self, interval: float) -> Callable[[Tick], Tick]:
        def register(fun: Tick) -> Tick:
            self.timers.append((interval, fun))
            return fun
        return register

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)


def test_a_running_worker_stops_when_the_marker_changes_and_only_then(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch's verdicts against the real broker, from its timer and at a rebalance's revocation: same marker
    -> nothing; another token or no marker topic -> one CRITICAL line and a crash; an unreachable broker -> no
    verdict."""
    from stream_worker.broker import free_port
    from stream_worker.broker_identity import BrokerChangedError, watch_broker_identity

    settings = WorkerSettings(bootstrap_servers=broker.bootstrap, app_id=f"watch-{time.monotonic_ns()}",
                              broker_identity_check_s=0.5)
    identity = broker_identity(settings)

    def check(settings: WorkerSettings, identity: BrokerIdentity) -> list[BaseException]:
        verdicts = []
        for at_rebalance in (False, True):
            app = _App()
            watch_broker_identity(app, settings, identity)
            [(interval, timer)] = app.timers
            assert interval == settings.broker_identity_check_s
            [on_revoked] = app.on_partitions_revoked.receivers
            asyncio.run(on_revoked(app, set()) if at_rebalance else timer())
            verdicts.append(app.crashes)
        assert [str(crash) for crash in verdicts[0]] == [str(crash) for crash in verdicts[1]]
        return verdicts[0]

    with caplog.at_level(logging.INFO, logger="stream_worker.broker_identity"):
        assert check(settings, identity) == []
        assert check(settings.model_copy(update={"bootstrap_servers": f"localhost:{free_port()}"}), identity) == []
        assert not [r for r in caplog.records if r.name.startswith("stream_worker") and r.levelno >= logging.WARNING]
        [crash] = check(settings, BrokerIdentity(identity.topic, "c" * 32, identity.cluster_id))
        assert isinstance(crash, BrokerChangedError) and f"its token is now {identity.token[:12]}" in str(crash)
        [gone] = check(settings, BrokerIdentity("nothing-broker-identity", "c" * 32, None))
        assert "nothing-broker-identity is gone" in str(gone)
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("stream_worker") and r.levelno >= logging.ERROR]
    assert len(lines) == 4 and all("changed under the running worker" in line for line in lines)  # 2 x 2 ways


def _clicks(sessions: int, per_session: int, first_n: int, tag: str) -> list[tuple[bytes, bytes]]:
    out = []
    for m in range(per_session):
        for s in range(sessions):
            session = f"s{s}"
            out.append((session.encode(), json.dumps({
                "session_id": session, "item_id": f"i{(s * 7 + m) % 40}", "timestamp": 1000.0 + first_n + m,
                "event_id": f"{tag}:{session}:{m}"}).encode()))
    return out


def _event_count(worker: WorkerProcess, session: str) -> int:
    """Clicks applied to ``session`` (the read path), retried while its partition is being assigned."""
    deadline = time.monotonic() + 30
    while True:
        status, body, _ = worker.request(f"/sessions/{session}/recommendations")
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, body
    return int(body["event_count"])


@pytest.mark.broker  # its own tansu, restarted
def test_worker_on_a_memory_broker_restarted_empty_starts_fresh_once(models: Path, tmp_path: Path) -> None:
    """Worker over clicks; stopped; restarted on the same broker (its data kept, as on a broker that keeps its
    data); stopped with the broker; broker restarted empty; worker started on the same data dir: it logs the drop
    once, starts fresh and predicts every new click; its next start keeps its data. (A broker restarted under a
    running worker: the slow test in tests/test_reliability.py.)"""
    from stream_worker.replay import produce_raw
    from stream_worker.tail import read_topic
    from tests.support.outage import Tansu

    broker = Tansu("memory://tansu/", tmp_path / "tansu.log").start()
    data_dir = tmp_path / "rocksdb"
    worker = WorkerProcess(broker.bootstrap, models, data_dir, "identity", tmp_path / "worker.log")
    predictions = worker.topic("predictions")
    try:
        worker.start()
        produce_raw(broker.bootstrap, worker.topic("clicks"), _clicks(20, 5, 0, "first"))
        worker.wait_until(lambda s: s["predictions"] >= 100, what="first clicks predicted")
        time.sleep(1.5)  # committed
        assert worker.stop() == 0

        sentinel = data_dir / "v1" / "tables" / "kept"
        sentinel.write_text("the table dir of the first run")
        worker.start()  # same broker: nothing dropped, sessions go on
        produce_raw(broker.bootstrap, worker.topic("clicks"), _clicks(20, 2, 100, "second"))
        worker.wait_until(lambda s: s["predictions"] >= 40, what="second clicks predicted")
        assert _event_count(worker, "s3") == 7
        time.sleep(1.5)
        assert worker.stop() == 0
        assert sentinel.exists() and worker.log_count(DROPPED) == 0

        broker.stop()
        broker.start()  # memory storage: every topic, offset and group is gone
        worker.start()
        fresh = _clicks(20, 3, 200, "third")
        produce_raw(broker.bootstrap, worker.topic("clicks"), fresh)
        records = read_topic(broker.bootstrap, predictions, expected=len(fresh), idle_timeout_s=60)
        expected_ids = {json.loads(value)["event_id"] for _, value in fresh}
        assert {json.loads(r.value or b"")["event_id"] for r in records} == expected_ids
        assert worker.log_count(DROPPED) == 1 and not sentinel.exists()
        assert _event_count(worker, "s3") == 3  # the session started afresh on the new broker
        assert worker.log_count("ConsistencyError") == 0
        time.sleep(1.5)
        assert worker.stop() == 0
        worker.start()  # and the start after that keeps its data again
        assert _event_count(worker, "s3") == 3 and worker.log_count(DROPPED) == 1
    finally:
        worker.stop()
        broker.stop()
