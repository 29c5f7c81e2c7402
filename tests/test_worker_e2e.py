"""The worker end to end on the real embedded broker: parity with offline evaluation (GRU4REC and SASRec), dead
letters, restarts (SIGTERM, SIGKILL, lost RocksDB) and hot model swaps (within and across families)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelkit.artifact import load_artifact, set_current
from modelkit.registry import new_version_name
from offline.blend_params import BlendParams
from offline.hyperparams import GRU4RecParams
from offline.loaders import load_events
from offline.metrics import metrics_from_ranks
from offline.pipeline import evaluate_artifact, train_version
from offline.sasrec_params import SASRecParams
from schemas import ClickEvent, DeadLetter, OnlineMetrics
from stream_worker.broker import create_topics
from stream_worker.online_metrics import summary
from stream_worker.processor import Click, process_batch
from stream_worker.replay import click_messages, event_id, produce_raw, time_ordered
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState
from stream_worker.tail import read_topic
from tests.support.artifacts import random_rsc15_artifact
from tests.support.checks import same_ranking
from tests.support.streaming import WorkerProcess, online_ranks, predictions_by_event
from tests.support.workloads import Message, clicks_of

QUICK = GRU4RecParams(n_epochs=2)
QUICK_BLEND = BlendParams(gru4rec=QUICK, sasrec=SASRecParams(n_epochs=1, valid_fraction=0.0))
FAMILIES = ("gru4rec", "sasrec", "blend")

MALFORMED: list[tuple[bytes | None, bytes | None, str]] = [
    (b"s", b"{not json", "invalid_json"),
    (b"s", b"\xff\xfe\x00garbage", "invalid_json"),
    (b"s", b'{"session_id": "s", "item_id": 42, "timestamp": 1.0}', "validation"),
    (b"s", b'{"session_id": "s", "timestamp": 1.0}', "validation"),
    (b"s", b'{"session_id": "s", "item_id": "1", "timestamp": NaN}', "validation"),
    (b"s", b'{"session_id": "s", "item_id": "1", "timestamp": -5}', "validation"),
    (b"s", b'{"session_id": "s", "item_id": "1", "timestamp": 1.0, "extra": 1}', "validation"),
    (b"other", b'{"session_id": "s", "item_id": "1", "timestamp": 1.0}', "key_mismatch"),
    (None, b'{"session_id": "s", "item_id": "1", "timestamp": 1.0}', "key_mismatch"),
    (b"s", b"x" * 100_000, "payload_too_large"),
    (b"s", None, "invalid_payload"),
]


@pytest.fixture(scope="module")
def rsc15(rsc15_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        "train": load_events(rsc15_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv"),
        "valid": load_events(rsc15_dir / "yoochoose-clicks-100k_train_valid.txt", "session-tsv"),
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, rsc15: dict[str, pd.DataFrame]) -> Path:
    directory = tmp_path_factory.mktemp("models")
    train_version(rsc15["train"], QUICK, directory, progress=False)
    return directory


@pytest.fixture(scope="module")
def sasrec_models_dir(tmp_path_factory: pytest.TempPathFactory, rsc15_dir: Path) -> Path:
    """SASRec (2 blocks of 64, window 50) with random weights over the training items (as ``models_dir``'s)."""
    directory = tmp_path_factory.mktemp("sasrec-models")
    random_rsc15_artifact(directory, "sasrec", new_version_name(), rsc15_dir)
    return directory


@pytest.fixture(scope="module")
def blend_models_dir(tmp_path_factory: pytest.TempPathFactory, rsc15: dict[str, pd.DataFrame]) -> Path:
    """The default family, a GRU4REC + SASRec blend, trained briefly on the training clicks."""
    directory = tmp_path_factory.mktemp("blend-models")
    train_version(rsc15["train"], QUICK_BLEND, directory, progress=False)
    return directory


@pytest.fixture(scope="module", params=FAMILIES)
def family_models_dir(request: pytest.FixtureRequest) -> Path:
    """The models directory of each family in turn: trained GRU4REC, random SASRec, trained blend."""
    fixture = {"gru4rec": "models_dir", "sasrec": "sasrec_models_dir", "blend": "blend_models_dir"}[request.param]
    return Path(request.getfixturevalue(fixture))


def _messages(frame: pd.DataFrame) -> list[tuple[bytes | None, bytes | None]]:
    return [(key, value) for key, value, _ in click_messages(time_ordered(frame))]


def _expected_predictions(model_path: Path, frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Top-20 predictions of an uninterrupted, in-process run over the whole frame, by event id."""
    model = ServingModel(load_artifact(model_path))
    ordered = time_ordered(frame)
    clicks: dict[str, list[Click]] = {}
    for offset, (session, item, stamp, position) in enumerate(
        zip(ordered.session_id, ordered.item_id, ordered.timestamp, ordered.position, strict=True)
    ):
        event = ClickEvent(
            session_id=session, item_id=item, timestamp=float(stamp), event_id=event_id(session, position)
        )
        clicks.setdefault(session, []).append(Click(event, 0, offset))
    outcome = process_batch(model, clicks, {}, k=20, ring_size=50, received_at=0.0)
    return {json.loads(p)["event_id"]: json.loads(p) for _, p in outcome.predictions}


def test_replay_gives_one_prediction_per_valid_event_with_offline_parity(
    broker: Any, rsc15: dict[str, pd.DataFrame], family_models_dir: Path, tmp_path: Path
) -> None:
    models_dir = family_models_dir
    family = load_artifact(models_dir / "current").manifest.model_family
    worker = WorkerProcess(broker.bootstrap, models_dir, tmp_path / "rocksdb", f"parity-{family}",
                           tmp_path / "worker.log", metrics_interval_s=1.0)
    worker.start()
    try:
        messages = _messages(rsc15["valid"])
        for n, (key, value, _) in enumerate(MALFORMED):  # spread the bad messages through the stream
            messages.insert(1 + n * (len(messages) // len(MALFORMED)), (key, value))
        produce_raw(broker.bootstrap, worker.topic("clicks"), messages)
        stats = worker.wait_until(lambda s: s["events"] >= len(messages), timeout=120, what="all clicks consumed")
        metrics_text = worker.get("/metrics")
        time.sleep(2.5)  # at least one more metrics publication after the last click
    finally:
        worker.stop()
    n_valid = len(rsc15["valid"])
    records = read_topic(broker.bootstrap, worker.topic("predictions"), idle_timeout_s=3.0)
    predictions = predictions_by_event(records)
    assert len(records) == n_valid and len(predictions) == n_valid  # exactly one per valid event
    assert all(r.key == json.loads(r.value or b"")["session_id"].encode() for r in records)
    assert stats["dead_letters"] == len(MALFORMED) and stats["predictions"] == n_valid
    assert f"streamrec_events_total {len(messages)}" in metrics_text

    letters = [DeadLetter.model_validate_json(r.value or b"")
               for r in read_topic(broker.bootstrap, worker.topic("dead_letter"), idle_timeout_s=3.0)]
    assert sorted(letter.error_type for letter in letters) == sorted(kind for _, _, kind in MALFORMED)
    assert all(letter.topic == worker.topic("clicks") and letter.error for letter in letters)

    # Online/offline parity: the same ranks, so the same Recall@20 and MRR@20 as `streamrec evaluate`.
    artifact = load_artifact(models_dir / "current")
    offline, kept = evaluate_artifact(artifact, rsc15["valid"], rsc15["train"])
    assert kept.dropped_events == 0
    ranks = online_ranks(predictions, rsc15["valid"], event_id)
    online = metrics_from_ranks(np.where(ranks > 0, ranks, 10**9), cutoffs=(20,))
    # Equal in practice; the tolerance admits one near-tie flip (float noise across batch compositions).
    one_event = 1.0 / offline["n_predictions"]
    assert online["n_predictions"] == offline["n_predictions"]
    assert online["recall@20"] == pytest.approx(offline["recall@20"], abs=one_event)
    assert online["mrr@20"] == pytest.approx(offline["mrr@20"], abs=one_event)

    # The worker's own online evaluation (metrics topic) agrees with the offline figures too.
    reports = [OnlineMetrics.model_validate_json(r.value or b"")
               for r in read_topic(broker.bootstrap, worker.topic("metrics"), idle_timeout_s=3.0)]
    latest = max((r for r in reports if r.model_version == artifact.version), key=lambda r: r.produced_at)
    reported = summary(latest.since_start)
    assert reported["n"] == offline["n_predictions"]
    assert reported["recall@20"] == pytest.approx(offline["recall@20"], abs=one_event)
    assert reported["mrr@20"] == pytest.approx(offline["mrr@20"], abs=one_event)
    assert stats["online"][artifact.version]["since_start"]["n"] == offline["n_predictions"]


def test_restarts_recover_state_exactly(
    broker: Any, rsc15: dict[str, pd.DataFrame], models_dir: Path, tmp_path: Path
) -> None:
    frame = rsc15["valid"]
    messages = _messages(frame)
    thirds = [messages[: len(messages) // 3], messages[len(messages) // 3 : 2 * len(messages) // 3],
              messages[2 * len(messages) // 3 :]]
    data_dir = tmp_path / "rocksdb"
    worker = WorkerProcess(broker.bootstrap, models_dir, data_dir, "restart", tmp_path / "worker.log")
    clicks = worker.topic("clicks")
    worker.start()
    produce_raw(broker.bootstrap, clicks, thirds[0])
    worker.wait_until(lambda s: s["events"] >= len(thirds[0]), what="first third")
    assert worker.stop(signal.SIGTERM) == 0  # graceful: offsets committed, RocksDB closed

    worker.start()  # warm restart from RocksDB
    produce_raw(broker.bootstrap, clicks, thirds[1])
    worker.wait_until(lambda s: s["events"] > len(thirds[1]) // 2, what="half of the second third")
    worker.stop(signal.SIGKILL)  # mid-stream: nothing flushed, nothing committed after the last commit

    shutil.rmtree(data_dir)  # and the local RocksDB is lost: state must come back from the changelog
    worker.start()
    produce_raw(broker.bootstrap, clicks, thirds[2])
    worker.wait_until(lambda s: s["lag_total"] == 0 and s["events"] > 0, what="caught up")
    time.sleep(2)
    worker.stop()

    predictions = predictions_by_event(read_topic(broker.bootstrap, worker.topic("predictions"), idle_timeout_s=3.0))
    expected = _expected_predictions(models_dir / "current", frame)
    assert set(predictions) == set(expected)  # every valid event has a prediction
    wrong = [e for e, ps in predictions.items() if not all(same_ranking(p, expected[e]) for p in ps)]
    assert not wrong, f"{len(wrong)} predictions differ from an uninterrupted run, e.g. {wrong[:3]}"


def test_hot_model_swap_during_replay_and_corrupt_artifact_refused(
    broker: Any, rsc15: dict[str, pd.DataFrame], models_dir: Path, tmp_path: Path
) -> None:
    own_models = tmp_path / "models"
    shutil.copytree(models_dir, own_models, symlinks=True)
    old_version = load_artifact(own_models / "current").version
    worker = WorkerProcess(broker.bootstrap, own_models, tmp_path / "rocksdb", "swap", tmp_path / "worker.log")
    worker.start()
    messages = _messages(rsc15["valid"])
    half = len(messages) // 2
    try:
        produce_raw(broker.bootstrap, worker.topic("clicks"), messages[:half])
        worker.wait_until(lambda s: s["events"] >= half, what="first half")
        path, _, _ = train_version(rsc15["train"], GRU4RecParams(n_epochs=1, seed=7), own_models, progress=False)
        new_version = path.name
        manifest = (path / "manifest.json").read_bytes()
        produce_raw(broker.bootstrap, worker.topic("model_updates"), [(new_version.encode(), manifest)])
        worker.wait_until(lambda s: s["model_version"] == new_version, what="swap to the new version")

        broken = own_models / "99999999T000000Z-broken"  # a newer version whose weights are truncated
        shutil.copytree(path, broken)
        weights = (broken / "weights.npz").read_bytes()
        (broken / "weights.npz").write_bytes(weights[: len(weights) // 3])
        manifest_json = json.loads(manifest)
        manifest_json["version"] = broken.name
        (broken / "manifest.json").write_text(json.dumps(manifest_json))
        set_current(own_models, broken.name)  # the pointer moves too: the poller must refuse it as well
        update = (broken.name.encode(), json.dumps(manifest_json).encode())
        produce_raw(broker.bootstrap, worker.topic("model_updates"), [update])
        stats = worker.wait_until(lambda s: s["model_load_failures"] >= 1, what="corrupt artifact refused")
        assert stats["model_version"] == new_version and "weights" in stats["model_last_error"]

        produce_raw(broker.bootstrap, worker.topic("clicks"), messages[half:])
        stats = worker.wait_until(lambda s: s["events"] >= len(messages), what="second half")
    finally:
        worker.stop()
    records = read_topic(broker.bootstrap, worker.topic("predictions"), idle_timeout_s=3.0)
    predictions = sorted((json.loads(r.value or b"") for r in records), key=lambda p: p["produced_at"])
    versions = [p["model_version"] for p in predictions]
    assert len(records) == len(messages)  # no event lost across the swaps
    assert set(versions[:half]) == {old_version} and set(versions[half:]) == {new_version}
    assert stats["model_swaps"] == 1 and stats["recomputed_sessions"] > 0


def _phased_reference(models: list[ServingModel], messages: list[Message], bounds: list[int]) -> dict[str, Any]:
    """Top-20 predictions by event id of an in-process run that serves ``models[i]`` for the messages
    ``bounds[i]:bounds[i + 1]``, session states carried from one model to the next (as the worker's table)."""
    clicks = clicks_of(messages)
    states: dict[str, SessionState | None] = {}
    expected: dict[str, Any] = {}
    for model, (first, end) in zip(models, pairwise(bounds), strict=True):
        phase = {s: [c for c in cs if first <= c.offset < end] for s, cs in clicks.items()}
        outcome = process_batch(model, {s: cs for s, cs in phase.items() if cs}, states, k=20, ring_size=50,
                                received_at=0.0)
        states.update(outcome.states)
        expected.update((json.loads(p)["event_id"], json.loads(p)) for _, p in outcome.predictions)
    return expected


@pytest.mark.parametrize("other", ["sasrec", "blend"])
def test_swaps_between_families_during_replay_lose_nothing(
    broker: Any, rsc15: dict[str, pd.DataFrame], models_dir: Path, rsc15_dir: Path, tmp_path: Path, other: str,
    request: pytest.FixtureRequest,
) -> None:
    """GRU4REC -> SASRec (or the blend) -> GRU4REC again (model-updates messages; the current pointer stays on
    GRU4REC, so the pointer poll cannot race them) between thirds of a replay: one prediction per click, each third
    from its model, sessions carried across the swaps (rebuilt from their ring of recent items) exactly as an in-process
    run that swaps at the same clicks."""
    own_models = tmp_path / "models"
    shutil.copytree(models_dir, own_models, symlinks=True)
    gru_version = load_artifact(own_models / "current").version
    worker = WorkerProcess(broker.bootstrap, own_models, tmp_path / "rocksdb", f"family-swap-{other}",
                           tmp_path / "worker.log")
    worker.start()
    messages = _messages(rsc15["valid"])
    bounds = [0, len(messages) // 3, 2 * len(messages) // 3, len(messages)]
    if other == "sasrec":
        other_version = random_rsc15_artifact(own_models, "sasrec", new_version_name(), rsc15_dir,
                                              make_current=False).name
    else:
        blend_dir = Path(request.getfixturevalue("blend_models_dir"))
        other_version = load_artifact(blend_dir / "current").version
        shutil.copytree(blend_dir / other_version, own_models / other_version)

    def replay_third(n: int) -> dict[str, Any]:
        produce_raw(broker.bootstrap, worker.topic("clicks"), messages[bounds[n] : bounds[n + 1]])
        return worker.wait_until(lambda s: s["events"] >= bounds[n + 1], what=f"third {n + 1}")

    def swap_to(version: str) -> None:
        update = (version.encode(), (own_models / version / "manifest.json").read_bytes())
        produce_raw(broker.bootstrap, worker.topic("model_updates"), [update])
        worker.wait_until(lambda s: s["model_version"] == version, what=f"swap to {version}")

    try:
        replay_third(0)
        swap_to(other_version)
        replay_third(1)
        swap_to(gru_version)
        stats = replay_third(2)
    finally:
        worker.stop()
    records = read_topic(broker.bootstrap, worker.topic("predictions"), idle_timeout_s=3.0)
    predictions = predictions_by_event(records)
    phase_of = {json.loads(value or b"")["event_id"]: n
                for n, (first, end) in enumerate(pairwise(bounds)) for _, value in messages[first:end]}
    assert len(records) == len(messages) and set(predictions) == set(phase_of)  # exactly one per click
    family_of = {v: load_artifact(own_models / v).manifest.model_family for v in (gru_version, other_version)}
    versions = [{p[0]["model_version"] for e, p in predictions.items() if phase_of[e] == n} for n in range(3)]
    assert versions == [{gru_version}, {other_version}, {gru_version}]
    assert [family_of[v] for (v,) in versions] == ["gru4rec", other, "gru4rec"]
    assert stats["model_swaps"] == 2 and stats["recomputed_sessions"] > 0

    models = [ServingModel(load_artifact(own_models / v)) for v in (gru_version, other_version, gru_version)]
    expected = _phased_reference(models, messages, bounds)
    wrong = [e for e, ps in predictions.items() if not same_ranking(ps[0], expected[e])]
    assert not wrong, f"{len(wrong)} predictions differ from an in-process run with the same swaps: {wrong[:3]}"


def test_idle_sessions_expire_in_event_time(
    broker: Any, rsc15: dict[str, pd.DataFrame], models_dir: Path, tmp_path: Path
) -> None:
    items = rsc15["train"]["item_id"].unique()[:3].tolist()

    def click(session: str, n: int, at: float) -> tuple[bytes, bytes]:
        event = ClickEvent(session_id=session, item_id=items[n % 3], timestamp=at, event_id=f"{session}:{n}")
        return session.encode(), event.model_dump_json().encode()

    worker = WorkerProcess(broker.bootstrap, models_dir, tmp_path / "rocksdb", "ttl", tmp_path / "worker.log",
                           session_ttl_s=600, expiry_interval_s=0.2, partitions=1)
    create_topics(broker.bootstrap, {worker.topic("clicks"): 1})
    worker.start()
    try:
        t0 = 1_400_000_000.0
        produce_raw(broker.bootstrap, worker.topic("clicks"), [click("old", 0, t0), click("old", 1, t0 + 60)])
        worker.wait_until(lambda s: s["events"] >= 2, what="old session applied")
        time.sleep(0.5)
        # An hour later in event time: "old" has been idle for longer than the 10-minute TTL.
        produce_raw(broker.bootstrap, worker.topic("clicks"), [click("new", 0, t0 + 3600)])
        worker.wait_until(lambda s: s["events"] >= 3, what="new session applied")
        time.sleep(0.5)
        produce_raw(broker.bootstrap, worker.topic("clicks"), [click("new", 1, t0 + 3610)])
        stats = worker.wait_until(lambda s: s["expired_sessions"] >= 1, what="old session expired")
        assert stats["expired_sessions"] == 1  # "new" is within the TTL
    finally:
        worker.stop()
    changelog = read_topic(broker.bootstrap, f"{worker.env['STREAMREC_APP_ID']}-sessions-changelog",
                           idle_timeout_s=3.0)
    last = {record.key: record.value for record in changelog}
    assert last[b"old"] is None and last[b"new"] is not None  # a tombstone: recovery drops it too


def test_worker_refuses_clicks_topic_not_co_partitioned(broker: Any, models_dir: Path, tmp_path: Path) -> None:
    worker = WorkerProcess(broker.bootstrap, models_dir, tmp_path / "rocksdb", "copart", tmp_path / "worker.log",
                           partitions=2)
    create_topics(broker.bootstrap, {worker.topic("clicks"): 3})
    with contextlib.suppress(RuntimeError):  # it may already have exited before answering
        worker.start(timeout=60)
    assert worker.process is not None
    assert worker.process.wait(timeout=60) != 0
    assert "has 3 partitions but STREAMREC_PARTITIONS is 2" in worker.log_path.read_text()
