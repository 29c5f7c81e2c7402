"""The read path: GET /sessions/{id}/recommendations answers a session's latest top-k from the sessions table,
on any worker of the group (routed to the owner of the session's partition)."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkit.artifact import load_artifact
from schemas import ClickEvent
from stream_worker.processor import Click, process_batch
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState, item_hash32
from stream_worker.web import SERVED_BY_HEADER, resolve_top, session_answer, session_partition
from tests.support.artifacts import random_artifact
from tests.support.streaming import WorkerProcess


def _colliding_ids() -> tuple[str, str]:
    """Two item ids with the same 32-bit item hash (a birthday search: ~80k hashes)."""
    seen: dict[int, str] = {}
    n = 0
    while True:
        item = f"c{n}"
        hashed = item_hash32(item)
        if hashed in seen:
            return seen[hashed], item
        seen[hashed] = item
        n += 1


@pytest.fixture(scope="module")
def colliding() -> tuple[str, str]:
    return _colliding_ids()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, colliding: tuple[str, str]) -> Path:
    """40 items i0..i39 plus two ids sharing their 32-bit hash; the two are the most popular."""
    directory = tmp_path_factory.mktemp("read-models")
    items = [*colliding, *(f"i{n}" for n in range(40))]
    random_artifact(directory, "read-v1", items=items, noise=0.5)
    return directory


def _model(models: Path, version: str = "read-v1") -> ServingModel:
    return ServingModel(load_artifact(models / version))


def _click(session: str, item: str, n: int) -> Click:
    event = ClickEvent(session_id=session, item_id=item, timestamp=1000.0 + n, event_id=f"{session}:{n}")
    return Click(event, 0, n)


def _run(model: ServingModel, session: str, items: list[str], k: int) -> tuple[SessionState, dict[str, Any]]:
    """State and last prediction of ``session`` after clicking ``items`` one batch at a time."""
    state: SessionState | None = None
    prediction: dict[str, Any] = {}
    for n, item in enumerate(items):
        outcome = process_batch(model, {session: [_click(session, item, n)]}, {session: state}, k, 50, 0.0)
        state = outcome.states[session]
        prediction = json.loads(outcome.predictions[-1][1])
    assert state is not None
    return SessionState.decode(state.encode()), prediction


# ------------------------------------------------------------------------------------------------- unit tests


def test_session_partition_is_where_kafka_clients_put_the_session_key() -> None:
    """The read path's partition is the default partitioner's of the clicks key (kafka-python: replay's producer)."""
    from kafka.partitioner.default import murmur2

    rng = np.random.default_rng(0)
    ids = ["s1", "", "a b é", "a/b", "50%", "x" * 256, "🙂", *(f"{rng.integers(1 << 40)}-{n}" for n in range(500))]
    for partitions in (1, 2, 3, 4, 7, 16):
        for session in ids:
            expected = (murmur2(session.encode()) & 0x7FFFFFFF) % partitions
            assert session_partition(session, partitions) == expected, (session, partitions)


def test_hash32_lookup_finds_every_item_and_both_of_a_collision(models: Path, colliding: tuple[str, str]) -> None:
    model = _model(models)
    first, second = (model.index_of(item) for item in colliding)
    assert model.item_hash32[first] == model.item_hash32[second]
    found = model.indices_of_hash32(model.item_hash32)
    for index, options in enumerate(found):
        expected = [first, second] if index in (first, second) else [index]
        assert options.tolist() == expected
    missing = next(h for h in range(1 << 20) if h not in set(model.item_hash32.tolist()))
    assert model.indices_of_hash32(np.array([missing], np.uint32))[0].tolist() == []


@pytest.mark.parametrize("clicked", [["i3", "i7", "i1"], ["unknown-1", "unknown-2"]], ids=["model", "popularity"])
def test_stored_top_k_resolves_to_the_published_items_even_with_a_hash_collision(
    models: Path, colliding: tuple[str, str], clicked: list[str]
) -> None:
    """k = the whole catalogue, so the two colliding items are in the top-k: the stored scores tell them apart
    (the session's own scores on the model path, the popularity on the popularity path)."""
    model = _model(models)
    state, prediction = _run(model, "s", clicked, k=len(model.item_ids))
    assert set(colliding) <= set(prediction["items"])
    items, scores = resolve_top(state, model)
    assert items == prediction["items"]
    assert np.array_equal(np.asarray(scores, np.float32), np.asarray(prediction["scores"], np.float32))
    answer = session_answer("s", 2, state, model)
    assert answer["model_version"] == prediction["model_version"] == "read-v1"
    assert answer["path"] == prediction["path"] and answer["event_timestamp"] == prediction["event_timestamp"]
    assert answer["partition"] == 2 and answer["event_count"] == len(clicked)
    assert json.loads(json.dumps(answer)) == answer


def test_after_a_model_swap_items_the_new_model_cannot_name_are_left_out(
    models: Path, colliding: tuple[str, str], tmp_path: Path
) -> None:
    """The state's top-k came from read-v1; read-v2 dropped i5 from its catalogue. Until the session's next click
    the answer keeps read-v1's version and order, without i5 and without the two colliding items (read-v2's
    scores cannot tell which of them read-v1 meant)."""
    model = _model(models)
    state, prediction = _run(model, "s", ["i3", "i7"], k=len(model.item_ids))
    random_artifact(tmp_path, "read-v2", items=[*colliding, *(f"i{n}" for n in range(40) if n != 5)], seed=1)
    swapped = _model(tmp_path, "read-v2")
    items, scores = resolve_top(state, swapped)
    kept = [(item, score) for item, score in zip(prediction["items"], prediction["scores"], strict=True)
            if item != "i5" and item not in colliding]
    assert items == [item for item, _ in kept]
    assert np.array_equal(np.asarray(scores, np.float32), np.asarray([score for _, score in kept], np.float32))
    assert session_answer("s", 0, state, swapped)["model_version"] == "read-v1"


# ---------------------------------------------------------------------------------------- two workers, real broker


def _path(session: str) -> str:
    return f"/sessions/{urllib.parse.quote(session, safe='')}/recommendations"


def _ask(worker: WorkerProcess, session: str, timeout_s: float = 30.0) -> tuple[int, Any, dict[str, str]]:
    """The answer of ``worker`` for ``session``, retried while the worker says 503 (a partition moving)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, headers = worker.request(_path(session))
        if status != 503 or time.monotonic() > deadline:
            return status, body, headers
        time.sleep(0.5)


def _assigned(worker: WorkerProcess) -> set[int]:
    return {int(p) for p in worker.stats().get("lag", {})}


def test_every_worker_answers_for_sessions_the_other_owns(broker: Any, models: Path, tmp_path: Path) -> None:
    """Two workers in one group, 4 partitions: each is asked for every session; for sessions in the other's
    partitions the request is forwarded there. Every answer equals the last prediction published for the session
    (items, scores, model version, path, event time, source partition); unknown sessions are 404 on both."""
    from stream_worker.broker import create_topics
    from stream_worker.replay import produce_raw
    from stream_worker.tail import read_topic

    prefix = f"read-{time.monotonic_ns()}"
    workers = [WorkerProcess(broker.bootstrap, models, tmp_path / f"data-{name}", prefix, tmp_path / f"{name}.log")
               for name in "AB"]
    create_topics(broker.bootstrap, {workers[0].topic("clicks"): 4, workers[0].topic("predictions"): 4})
    rng = np.random.default_rng(7)
    sessions = [f"s{n}" for n in range(80)] + ["a b é", "a/b", "50%", "?#", "u-only"]
    messages = []
    for n, session in enumerate(sessions):
        for m in range(int(rng.integers(1, 5))):
            item = f"unknown-{m}" if session == "u-only" else f"i{rng.integers(40)}"
            messages.append((session.encode(), json.dumps({"session_id": session, "item_id": item,
                                                           "timestamp": 1000.0 + 10 * n + m,
                                                           "event_id": f"{session}:{m}"}).encode()))
    try:
        for worker in workers:
            worker.start()
        produce_raw(broker.bootstrap, workers[0].topic("clicks"), messages)
        records = read_topic(broker.bootstrap, workers[0].topic("predictions"), expected=len(messages),
                             idle_timeout_s=60)
        deadline = time.monotonic() + 60
        while not (_assigned(workers[0]) and _assigned(workers[1])
                   and _assigned(workers[0]) | _assigned(workers[1]) == {0, 1, 2, 3}):
            assert time.monotonic() < deadline, "both workers assigned"
            time.sleep(0.5)
        owned = {worker.url: _assigned(worker) for worker in workers}
        assert not owned[workers[0].url] & owned[workers[1].url]
        last: dict[str, dict[str, Any]] = {}
        for record in records:  # per partition in offset order: the last one of a session is its latest
            prediction = json.loads(record.value or b"")
            last[prediction["session_id"]] = prediction
        assert set(last) == set(sessions) and last["u-only"]["path"] == "popularity"

        forwarded = {worker.url: 0 for worker in workers}
        for worker in workers:
            for session in sessions:
                status, body, headers = _ask(worker, session)
                expected = last[session]
                assert status == 200, (worker.url, session, body)
                assert body["session_id"] == session and body["items"] == expected["items"]
                assert body["scores"] == expected["scores"]  # both the float32 scores' shortest JSON form
                assert body["model_version"] == expected["model_version"] == "read-v1"
                assert body["path"] == expected["path"]
                assert body["event_timestamp"] == expected["event_timestamp"]
                assert body["partition"] == expected["partition"] == session_partition(session, 4)
                [owner] = [url for url, partitions in owned.items() if body["partition"] in partitions]
                assert headers[SERVED_BY_HEADER] == owner
                forwarded[worker.url] += owner != worker.url
            for unknown in ("nobody", "nobody-2", "nobody/3", "nobody-4", "nobody-5", "nobody-6"):
                status, body, headers = _ask(worker, unknown)
                assert status == 404 and body["error"] == "unknown session", (worker.url, unknown, body)
        assert all(count > 0 for count in forwarded.values()), forwarded
        assert {worker.url: _assigned(worker) for worker in workers} == owned  # no rebalance in between
    finally:
        for worker in workers:
            worker.stop()
