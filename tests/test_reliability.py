"""Reliability: crash recovery, scale-out, broker outages (slow; the tests/support scenarios bench/ runs, smaller)
and quick checks of bounded sizes, artifact safety and the Kafka security settings passthrough."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkit.artifact import ArtifactError, load_artifact
from schemas import ClickEvent, DeadLetter, ModelManifest, Prediction
from schemas.events import MAX_ID_LENGTH
from stream_worker.model_holder import ModelHolder
from stream_worker.progress import PROGRESS_KEY, decode_progress
from stream_worker.replay import produce_raw
from stream_worker.session_state import SessionState, item_hash
from stream_worker.settings import WorkerSettings
from stream_worker.tail import read_topic
from tests.support.artifacts import random_artifact, random_rsc15_artifact, train_model
from tests.support.crash import run_crash_recovery
from tests.support.streaming import WorkerProcess
from tests.support.workloads import workload


@pytest.fixture(scope="module")
def rsc15_models(tmp_path_factory: pytest.TempPathFactory, rsc15_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("models")
    train_model(directory, rsc15_dir)
    return directory


@pytest.fixture(scope="module")
def rsc15_sasrec_models(tmp_path_factory: pytest.TempPathFactory, rsc15_dir: Path) -> Path:
    """SASRec with random weights over the items ``rsc15_models`` knows (there is no SASRec training yet)."""
    directory = tmp_path_factory.mktemp("sasrec-models")
    random_rsc15_artifact(directory, "sasrec", "rel-sasrec-v1", rsc15_dir)
    return directory


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("small-models")
    random_artifact(directory, "rel-v1", noise=0.5)
    return directory


# ------------------------------------------------------------------------------------------------ slow scenarios


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gru4rec", "sasrec"])
def test_sigkill_loop_loses_nothing_and_ends_in_the_fault_free_state(
    broker: Any, family: str, request: pytest.FixtureRequest, rsc15_dir: Path, tmp_path: Path
) -> None:
    """5 SIGKILLs at random moments (every second restart without RocksDB): every event predicted, every
    prediction (duplicates included) equal to the fault-free one, final table equal to the fault-free states;
    with a GRU4REC (hidden state) and a SASRec (window of items) model."""
    models = Path(request.getfixturevalue("rsc15_models" if family == "gru4rec" else "rsc15_sasrec_models"))
    report = run_crash_recovery(broker.bootstrap, models, tmp_path, workload(30_000, rsc15_dir), n_kills=5,
                                seed=3, max_gap_s=2.5, log=lambda _: None)
    assert report.model["family"] == family
    assert len(report.kills) == 5
    assert report.predictions["without_prediction"] == 0
    assert report.predictions["differing_from_fault_free"] == 0, report.predictions["examples"]
    assert report.states["missing"] == report.states["wrong"] == report.states["extra"] == 0, report.states
    assert report.duplicates["same_incarnation"] == 0  # duplicates only from redelivery after a kill
    assert report.states["max_hidden_diff"] <= 1e-5


@pytest.mark.slow
def test_scale_out_failover_rebalance_and_model_swap(
    broker: Any, rsc15_models: Path, rsc15_dir: Path, tmp_path: Path
) -> None:
    from tests.support.scale import run_scale_out

    report = run_scale_out(broker.bootstrap, rsc15_models, tmp_path, workload(12_000, rsc15_dir), rate=300.0,
                           standby_replicas=1, phase_s=8.0, log=lambda _: None)
    assert report.moved_partitions and set(report.recovery_s) == set(report.moved_partitions)
    assert report.recovery_max_s < 60
    assert sorted(report.after_third["B"] + report.after_third["C"]) == [0, 1, 2, 3]
    assert report.predictions["without_prediction"] == 0 and report.predictions["differing_from_fault_free"] == 0
    assert report.states["missing"] == report.states["wrong"] == 0, report.states
    assert report.model_swap["all_post_swap_on_new_version"] and set(report.model_swap["seconds_to_serve"]) == {
        "B", "C"}


@pytest.mark.slow
@pytest.mark.broker  # its own tansu, on moto's S3
def test_broker_outage_with_durable_storage_is_survived(rsc15_models: Path, rsc15_dir: Path, tmp_path: Path) -> None:
    from tests.support.outage import MotoServer, Tansu, find_moto_server, run_outage

    executable = find_moto_server()
    if executable is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]', or set MOTO_SERVER)")
    moto = MotoServer(executable, "tansu", tmp_path / "moto.log")
    broker = Tansu("s3://tansu/", tmp_path / "tansu.log", moto.tansu_env())
    try:
        broker.start()
        report = run_outage(broker, rsc15_models, tmp_path, workload(2000, rsc15_dir), 8.0, durable=True,
                            log=lambda _: None)
    finally:
        broker.stop()
        moto.stop()
    assert report.worker_alive_after
    assert report.predictions["without_prediction"] == 0 and report.predictions["differing_from_fault_free"] == 0
    assert report.states["missing"] == report.states["wrong"] == 0


@pytest.mark.slow
@pytest.mark.broker  # its own tansu
def test_memory_broker_restart_stops_the_worker_and_its_next_start_is_fresh(
    small_models: Path, tmp_path: Path
) -> None:
    """A memory-storage restart wipes every topic, committed offset and the changelog while the worker's RocksDB
    keeps its offsets. This test used to assert the failure (ConsistencyError, or a worker that stayed up and
    consumed nothing) and that only deleting the data dir by hand helped. Now the running worker notices that the
    broker's identity marker is gone (at the rebalance, before Faust's recovery could raise ConsistencyError, or
    within ``broker_identity_check_s`` without one) and stops with one CRITICAL line, and its next start on the
    same data dir drops the stale table data with one log line and predicts every click
    (stream_worker/broker_identity.py)."""
    from stream_worker.tail import end_offsets
    from tests.support.outage import Tansu

    broker = Tansu("memory://tansu/", tmp_path / "tansu.log").start()
    data_dir = tmp_path / "rocksdb"
    worker = WorkerProcess(broker.bootstrap, small_models, data_dir, "memrestart", tmp_path / "worker.log")
    messages = [(f"s{n % 50}".encode(), json.dumps({"session_id": f"s{n % 50}", "item_id": f"i{n % 40}",
                                                     "timestamp": 1000.0 + n}).encode()) for n in range(2000)]
    check_s = WorkerSettings().broker_identity_check_s
    try:
        worker.start()
        produce_raw(broker.bootstrap, worker.topic("clicks"), messages)
        worker.wait_until(lambda s: s["events"] >= len(messages), what="clicks consumed")
        broker.stop(signal.SIGKILL)
        time.sleep(3)
        broker.start()
        assert end_offsets(broker.bootstrap, "memrestart-worker-sessions-changelog", timeout_s=2) == {}
        assert worker.process is not None
        try:
            code = worker.process.wait(check_s + 40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running {check_s + 40:g} s after the broker came back empty: a stall")
        assert code != 0 and worker.log_count("CRITICAL stream_worker.broker_identity: the broker at") == 1
        assert worker.log_count("ConsistencyError") == 0

        worker.start()  # the same data dir
        assert worker.log_count("is not the one the local table data came from") == 1
        produce_raw(broker.bootstrap, worker.topic("clicks"), messages[:500])
        worker.wait_until(lambda s: s["predictions"] >= 500, what="fresh worker predicts every click")
        assert worker.log_count("ConsistencyError") == 0
    finally:
        worker.stop()
        broker.stop()


# ------------------------------------------------------------------------------------------------ quick checks


def test_sizes_are_bounded_from_outside(broker: Any, small_models: Path, tmp_path: Path) -> None:
    """A 3 MB click goes to the dead-letter topic with a truncated payload; a long session keeps ring_size items;
    predictions and changelog values stay small with maximal (256-character) ids."""
    ring_size, top_k = 8, 20
    worker = WorkerProcess(broker.bootstrap, small_models, tmp_path / "rocksdb", f"bounds-{time.monotonic_ns()}",
                           tmp_path / "worker.log", ring_size=ring_size, top_k=top_k)
    session = "S" * MAX_ID_LENGTH
    clicks = [(session.encode(), json.dumps({"session_id": session, "item_id": f"i{n % 40}", "timestamp": 10.0 + n,
                                             "event_id": "E" * MAX_ID_LENGTH}).encode()) for n in range(3 * ring_size)]
    huge = json.dumps({"session_id": session, "item_id": "x" * 3_000_000, "timestamp": 1.0}).encode()
    worker.start()
    try:
        produce_raw(broker.bootstrap, worker.topic("clicks"), [*clicks[:5], (session.encode(), huge), *clicks[5:]])
        worker.wait_until(lambda s: s["events"] >= len(clicks) + 1, what="all consumed")
        time.sleep(1.5)
    finally:
        assert worker.stop() == 0
    [letter_record] = read_topic(broker.bootstrap, worker.topic("dead_letter"), expected=1, idle_timeout_s=5)
    letter = DeadLetter.model_validate_json(letter_record.value or b"")
    assert letter.error_type == "payload_too_large" and letter.truncated and letter.payload_size == len(huge)
    assert len(letter.payload.encode()) <= 65536 and len(letter_record.value or b"") < 100_000
    predictions = read_topic(broker.bootstrap, worker.topic("predictions"), expected=len(clicks), idle_timeout_s=5)
    assert len(predictions) == len(clicks)
    for record in predictions:
        prediction = Prediction.model_validate_json(record.value or b"")
        assert len(prediction.items) == top_k and len(record.value or b"") < 4096
    changelog = read_topic(broker.bootstrap, f"{worker.env['STREAMREC_APP_ID']}-sessions-changelog",
                           idle_timeout_s=3)
    states = [SessionState.decode(r.value) for r in changelog if r.value and r.key != PROGRESS_KEY]
    assert states and max(len(s.ring) for s in states) == ring_size
    assert states[-1].event_count == len(clicks) and max(len(r.value or b"") for r in changelog) < 1024


def test_state_ahead_of_the_changelog_is_sent_again_on_redelivery(
    broker: Any, small_models: Path, tmp_path: Path
) -> None:
    """A SIGKILL between the RocksDB write and the changelog delivery leaves RocksDB ahead of the changelog while
    the click is not committed. On redelivery the click is already in the session's state (no prediction); the
    worker must send the stored state and then the progress to the changelog, or a later restore from the
    changelog (failover, lost data dir) would silently drop a click whose offset is committed by then. The crash
    is simulated by writing the advanced state into the stopped worker's RocksDB directly."""
    import rocksdict

    from stream_worker.processor import Click, process_batch
    from stream_worker.serving import ServingModel
    from stream_worker.tail import end_offsets

    data_dir = tmp_path / "rocksdb"
    worker = WorkerProcess(broker.bootstrap, small_models, data_dir, f"ahead-{time.monotonic_ns()}",
                           tmp_path / "worker.log")

    def click(n: int) -> tuple[bytes, bytes]:
        return b"s0", json.dumps({"session_id": "s0", "item_id": f"i{n % 40}", "timestamp": 100.0 + n,
                                  "event_id": f"s0:{n}"}).encode()

    worker.start()
    produce_raw(broker.bootstrap, worker.topic("clicks"), [click(n) for n in range(5)])
    worker.wait_until(lambda s: s["events"] >= 5, what="first clicks")
    time.sleep(2)  # committed
    assert worker.stop() == 0
    [partition] = {r.partition for r in read_topic(broker.bootstrap, worker.topic("clicks"), expected=5)}
    offset = end_offsets(broker.bootstrap, worker.topic("clicks"))[partition]

    db = rocksdict.Rdict(str(data_dir / "v1" / "tables" / f"sessions-{partition}.db"),
                         options=rocksdict.Options(raw_mode=True))
    try:
        raw = db.get(b"s0")
        assert raw is not None
        stored = SessionState.decode(bytes(raw))
        event = ClickEvent.model_validate_json(click(5)[1])
        model = ServingModel(load_artifact(small_models / "current"))
        ahead = process_batch(model, {"s0": [Click(event, partition, offset)]}, {"s0": stored}, 20, 50, 0.0)
        assert decode_progress(bytes(db[PROGRESS_KEY] or b"")) == offset  # (RocksDB gets it once delivered)
        db[b"s0"] = ahead.states["s0"].encode()  # in RocksDB, never delivered to the changelog
    finally:
        db.close()
    produce_raw(broker.bootstrap, worker.topic("clicks"), [click(5)])  # ... and the click is redelivered

    worker.start()
    stats = worker.wait_until(lambda s: s["events"] >= 1, what="redelivered click")
    time.sleep(2)
    assert worker.stop() == 0
    assert stats["duplicates"] == 1 and stats["redelivered"] == 0 and stats["predictions"] == 0
    changelog = read_topic(broker.bootstrap, f"{worker.env['STREAMREC_APP_ID']}-sessions-changelog",
                           idle_timeout_s=3)
    last = [r.value for r in changelog if r.key == b"s0"][-1]
    assert last is not None and SessionState.decode(last).event_count == 6  # not 5: the changelog caught up
    last_progress = [r.value for r in changelog if r.key == PROGRESS_KEY and r.partition == partition][-1]
    assert last_progress is not None and decode_progress(last_progress) == offset + 1


def _commit_group_offset(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Move a stopped worker's committed offset, as an operator's reset or a consumer that skipped clicks would."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.structs import OffsetAndMetadata

    class AsFaust(RangePartitionAssignor):  # the group's protocol name stays the worker's
        name = "faust"

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             partition_assignment_strategy=[AsFaust])
    try:  # tansu only takes commits from a member: join the group first
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        tp = TopicPartition(topic, 0)
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        assert consumer.committed(tp) == offset
    finally:
        consumer.close()


def test_clicks_the_consumer_skips_are_read_from_the_broker(
    broker: Any, small_models: Path, tmp_path: Path
) -> None:
    """The group's committed offset is moved past clicks never processed: (1) in the middle, so the consumer
    delivers later clicks first: the worker reads the skipped ones from the broker and applies everything in
    offset order; (2) to the end, so nothing is delivered: the catch-up timer reads them. Every click is
    predicted exactly once and every session state holds its clicks in order."""
    from stream_worker.broker import create_topics

    worker = WorkerProcess(broker.bootstrap, small_models, tmp_path / "rocksdb", f"skip-{time.monotonic_ns()}",
                           tmp_path / "worker.log", partitions=1, catch_up_interval_s=1.0)
    create_topics(broker.bootstrap, {worker.topic("clicks"): 1})
    items: dict[str, list[str]] = {f"s{n}": [] for n in range(5)}  # session -> its items in offset order

    def clicks(first: int, stop: int) -> list[tuple[bytes, bytes]]:
        out = []
        for n in range(first, stop):
            session, item = f"s{n % 5}", f"i{(n * 7) % 40}"
            items[session].append(item)
            out.append((session.encode(), json.dumps({"session_id": session, "item_id": item, "event_id": f"e{n}",
                                                      "timestamp": 1000.0 + n}).encode()))
        return out

    def restart_after_moving_the_offset(first: int, stop: int, committed: int) -> dict[str, Any]:
        produce_raw(broker.bootstrap, worker.topic("clicks"), clicks(first, stop))
        _commit_group_offset(broker.bootstrap, worker.env["STREAMREC_APP_ID"], worker.topic("clicks"), committed)
        worker.start()
        stats = worker.wait_until(lambda s: s["predictions"] >= stop - first, what="skipped clicks predicted")
        time.sleep(1.5)
        assert worker.stop() == 0
        return stats

    worker.start()
    produce_raw(broker.bootstrap, worker.topic("clicks"), clicks(0, 10))
    worker.wait_until(lambda s: s["predictions"] >= 10, what="first clicks")
    time.sleep(1.5)  # committed
    assert worker.stop() == 0
    middle = restart_after_moving_the_offset(10, 30, committed=20)  # 10..19 never delivered
    assert middle["gaps"] == 1 and middle["gap_records"] == 10 and middle["predictions"] == 20
    tail = restart_after_moving_the_offset(30, 40, committed=40)  # nothing delivered at all
    assert tail["gap_records"] == 10 and tail["predictions"] == 10 and tail["events"] == 0

    predictions = read_topic(broker.bootstrap, worker.topic("predictions"), expected=40, idle_timeout_s=3)
    predicted = sorted(Prediction.model_validate_json(r.value or b"").event_id or "" for r in predictions)
    assert predicted == sorted(f"e{n}" for n in range(40))  # each once
    changelog = read_topic(broker.bootstrap, f"{worker.env['STREAMREC_APP_ID']}-sessions-changelog",
                           idle_timeout_s=3)
    table = {r.key: r.value for r in changelog}
    assert decode_progress(table.pop(PROGRESS_KEY) or b"") == 40
    for session, session_items in items.items():
        state = SessionState.decode(table[session.encode()] or b"")
        assert state.ring == [item_hash(item) for item in session_items]  # all 8 clicks, in offset order


def test_pickled_weights_are_refused(small_models: Path, tmp_path: Path) -> None:
    """np.load(allow_pickle=False) refuses an object array inside weights.npz (test_artifact covers .npy)."""
    shutil.copytree(small_models / "rel-v1", tmp_path / "rel-v2")
    weights = dict(np.load(tmp_path / "rel-v2" / "weights.npz"))
    weights["item_bias"] = np.array([object()] * len(weights["item_bias"]))
    np.savez(tmp_path / "rel-v2" / "weights.npz", **weights)  # np.savez pickles object arrays
    with pytest.raises(ArtifactError, match="weights.npz.*allow_pickle"):
        load_artifact(tmp_path / "rel-v2")


@pytest.mark.parametrize("version", ["../x", "../../etc/passwd", "x/../../y"])
def test_model_updates_with_traversal_versions_are_refused(small_models: Path, version: str) -> None:
    """A model-updates message naming "../x" fails the manifest schema (the agent ignores it), and the holder
    refuses such a name even when asked directly."""
    manifest = json.loads((small_models / "current" / "manifest.json").read_text())
    with pytest.raises(ValueError, match="version"):
        ModelManifest.model_validate_json(json.dumps({**manifest, "version": version}))
    holder = ModelHolder(small_models)
    assert asyncio.run(holder.load_version(version)) is False
    assert holder.model.version == "rel-v1" and "refused model version name" in holder.last_error


def test_sasl_ssl_settings_reach_kafka_python_and_faust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", "b1:9093,b2:9093")
    monkeypatch.setenv("STREAMREC_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMREC_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("STREAMREC_SASL_USERNAME", "streamrec")
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "s3cret")
    settings = WorkerSettings()
    assert "s3cret" not in repr(settings)
    assert settings.kafka_python_config() == {
        "bootstrap_servers": ["b1:9093", "b2:9093"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "streamrec", "sasl_plain_password": "s3cret",
    }
    assert settings.broker_url() == "kafka://b1:9093;b2:9093"
    credentials: Any = settings.faust_credentials()
    assert (credentials.username, credentials.password) == ("streamrec", "s3cret")
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    assert credentials.ssl_context is not None

    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_plain_password"] == "s3cret"

    monkeypatch.delenv("STREAMREC_SASL_PASSWORD")
    with pytest.raises(ValueError, match="sasl_password"):
        WorkerSettings()
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "x")
    monkeypatch.setenv("STREAMREC_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValueError, match="not supported"):
        WorkerSettings()

