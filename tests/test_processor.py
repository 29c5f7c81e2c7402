"""Batch processing of clicks: state codec, idempotency, unknown items, version change, parity with offline scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelkit.artifact import load_artifact
from offline.evaluate import ModelScorer
from schemas import ClickEvent, Prediction
from stream_worker.processor import Click, process_batch
from stream_worker.serving import ServingModel, top_k
from stream_worker.session_state import SessionState, StateDecodeError, item_hash
from tests.support.artifacts import random_artifact

N_ITEMS, HIDDEN = 40, 8
FAMILIES = ("gru4rec", "sasrec")
SASREC_MAX_LEN = 4  # shorter than some test sessions: the window drops its oldest clicks


def _model(tmp_path: Path, version: str = "v1", seed: int = 0, family: str = "gru4rec") -> ServingModel:
    """A random model with noisy weights: GRU4REC with one layer, or SASRec with 2 blocks of 2 heads."""
    layers = (HIDDEN,) if family == "gru4rec" else (HIDDEN, HIDDEN)
    path = random_artifact(tmp_path, version, family=family, items=N_ITEMS, layers=layers, max_len=SASREC_MAX_LEN,
                           n_heads=2, seed=seed, noise=0.5, make_current=False)
    return ServingModel(load_artifact(path))


def _click(session: str, item: str, offset: int, event_id: str | None = None, at: float | None = None) -> Click:
    event = ClickEvent(session_id=session, item_id=item, timestamp=1000.0 + offset if at is None else at,
                       event_id=event_id)
    return Click(event, partition=0, offset=offset)


def test_state_codec_round_trip_and_refusal() -> None:
    state = SessionState("v1", np.arange(16, dtype=np.float32), [1, 2**64 - 1], 41, 7, 12.5, 3, 2,
                         np.array([5, 2**32 - 1], np.uint32), np.array([0.5, -1.0], np.float32))
    data = state.encode()
    back = SessionState.decode(data)
    assert back.ring == [1, 2**64 - 1] and back.last_offset == 41 and back.known_count == 2
    assert back.last_top.tolist() == [5, 2**32 - 1] and back.last_scores.tolist() == [0.5, -1.0]
    np.testing.assert_array_equal(back.model_state, state.model_state)
    assert len(data) == 40 + 2 + 16 + 16 + 64  # header + version + ring + top-k + hidden
    for broken in (data[:-1], b"\x07" + data[1:], b""):
        with pytest.raises(StateDecodeError):
            SessionState.decode(broken)


def test_top_k_orders_by_score_then_index() -> None:
    top = top_k(np.array([[0.1, 0.9, 0.5, 0.9, 0.0]]), 3)
    assert top.items.tolist() == [[1, 3, 2]]


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_match_offline_scores_for_any_batch_split(tmp_path: Path, family: str) -> None:
    model = _model(tmp_path, family=family)
    assert model.family == family
    offline = ModelScorer(load_artifact(model.artifact_path).model())
    rng = np.random.default_rng(1)
    sessions = {f"s{n}": rng.integers(0, N_ITEMS, size=rng.integers(1, 7)).tolist() for n in range(12)}
    assert max(len(items) for items in sessions.values()) > SASREC_MAX_LEN
    offsets = iter(range(10_000))
    clicks = {s: [_click(s, f"i{i}", next(offsets)) for i in items] for s, items in sessions.items()}
    # All at once, and one click at a time (state carried through the encoded bytes).
    together = process_batch(model, clicks, {}, k=5, ring_size=50, received_at=0.0)
    states: dict[str, SessionState | None] = {}
    one_by_one: list[tuple[str, bytes]] = []
    for s, session_clicks in clicks.items():
        for click in session_clicks:
            out = process_batch(model, {s: [click]}, states, k=5, ring_size=50, received_at=0.0)
            one_by_one += out.predictions
            states[s] = SessionState.decode(out.states[s].encode())
    for outcome in (together.predictions, one_by_one):
        by_session: dict[str, list[list[str]]] = {}
        for session_id, payload in outcome:
            prediction = Prediction.model_validate_json(payload)
            assert prediction.path == "model" and prediction.model_version == "v1"
            by_session.setdefault(session_id, []).append(prediction.items)
        for s, items in sessions.items():
            offline.reset(1)
            for position, item in enumerate(items):
                scores = offline.step(np.array([0]), np.array([item]))[0]
                assert by_session[s][position] == [f"i{i}" for i in np.argsort(-scores, kind="stable")[:5]]
    assert together.states.keys() == sessions.keys()


def test_duplicates_unknown_items_and_popularity_fallback(tmp_path: Path) -> None:
    model = _model(tmp_path)
    first = process_batch(model, {"a": [_click("a", "new-item", 5, "e5")]}, {}, k=3, ring_size=4, received_at=0.0)
    state = first.states["a"]
    prediction = Prediction.model_validate_json(first.predictions[0][1])
    assert prediction.path == "popularity" and prediction.items == ["i0", "i1", "i2"]  # most clicked first
    assert state.known_count == 0 and state.event_count == 1 and np.all(state.model_state == 0)
    assert state.ring == [item_hash("new-item")]
    again = process_batch(
        model, {"a": [_click("a", "new-item", 5, "e5"), _click("a", "new-item", 6, "e5", at=1005.0),
                      _click("a", "i3", 7, "e5"), _click("a", "i3", 8, "e8")]},
        {"a": state}, k=3, ring_size=4, received_at=0.0,
    )
    # Offset 5 is redelivered and offset 6 re-sends the same click (same id, item, time): both duplicates.
    # Offset 7 reuses the id for another click: applied, like offset 8.
    assert again.duplicates == 2 and len(again.predictions) == 2
    assert again.states["a"].known_count == 2 and again.states["a"].last_offset == 8


def test_the_ring_keeps_a_windowed_models_whole_window(tmp_path: Path) -> None:
    """A ring shorter than the served model's window grows to it, so the next SASRec version rebuilds exactly the
    state of the whole session; a ring kept under GRU4REC (no window) stays at the configured size."""
    gru, sasrec = _model(tmp_path, "v1", seed=0, family="gru4rec"), _model(tmp_path, "v2", seed=1, family="sasrec")
    sasrec_next = _model(tmp_path, "v3", seed=2, family="sasrec")
    assert (gru.window, sasrec.window) == (0, SASREC_MAX_LEN)
    clicks = [_click("a", f"i{i}", n) for n, i in enumerate([3, 9, 4, 12, 30, 5])]

    def kept_by(model: ServingModel) -> SessionState:
        return process_batch(model, {"a": clicks[:5]}, {}, k=5, ring_size=2, received_at=0.0).states["a"]

    assert len(kept_by(gru).ring) == 2 and len(kept_by(sasrec).ring) == SASREC_MAX_LEN
    fresh = process_batch(sasrec_next, {"a": clicks}, {}, k=5, ring_size=2, received_at=0.0).states["a"]
    after = {name: process_batch(sasrec_next, {"a": clicks[5:]}, {"a": kept_by(model)}, k=5, ring_size=2,
                                 received_at=0.0) for name, model in (("gru4rec", gru), ("sasrec", sasrec))}
    assert after["gru4rec"].recomputed == after["sasrec"].recomputed == 1
    np.testing.assert_allclose(after["sasrec"].states["a"].model_state, fresh.model_state, atol=1e-6)
    assert not np.allclose(after["gru4rec"].states["a"].model_state, fresh.model_state, atol=1e-6)


@pytest.mark.parametrize(("old_family", "new_family"),
                         [("gru4rec", "gru4rec"), ("gru4rec", "sasrec"), ("sasrec", "gru4rec"), ("sasrec", "sasrec")])
def test_model_change_recomputes_state_from_ring(tmp_path: Path, old_family: str, new_family: str) -> None:
    old, new = _model(tmp_path, "v1", seed=0, family=old_family), _model(tmp_path, "v2", seed=1, family=new_family)
    clicks = [_click("a", f"i{i}", n) for n, i in enumerate([3, 9, 4, 12, 30])]  # more than SASRec's window
    state = process_batch(old, {"a": clicks}, {}, k=5, ring_size=50, received_at=0.0).states["a"]
    on_new = process_batch(new, {"a": [_click("a", "i7", 10)]}, {"a": state}, k=5, ring_size=50, received_at=0.0)
    fresh = process_batch(new, {"a": [*clicks, _click("a", "i7", 10)]}, {}, k=5, ring_size=50, received_at=0.0)
    assert on_new.recomputed == 1 and on_new.states["a"].model_version == "v2"
    assert on_new.states["a"].model_state.shape == (new.network.state_size,)  # the new family's state
    np.testing.assert_allclose(on_new.states["a"].model_state, fresh.states["a"].model_state, atol=1e-6)
    assert on_new.predictions[-1][1].split(b'"scores"')[0] == fresh.predictions[-1][1].split(b'"scores"')[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_online_ranks_answer_the_previous_prediction_within_and_across_batches(tmp_path: Path, family: str) -> None:
    model = _model(tmp_path, family=family)
    items = [3, 9, 4, 4, 17, 2]
    clicks = [_click("a", f"i{i}", n) for n, i in enumerate(items)]
    together = process_batch(model, {"a": clicks}, {}, k=N_ITEMS, ring_size=50, received_at=0.0)
    state: SessionState | None = None
    ranks: list[tuple[str, int]] = []
    for click in clicks:  # one click per batch: the previous prediction comes back from the stored state
        out = process_batch(model, {"a": [click]}, {"a": state}, k=N_ITEMS, ring_size=50, received_at=0.0)
        ranks += out.ranks
        state = SessionState.decode(out.states["a"].encode())
    offline = ModelScorer(load_artifact(model.artifact_path).model())
    offline.reset(1)
    expected = []
    for current, following in zip(items, items[1:], strict=False):
        scores = offline.step(np.array([0]), np.array([current]))[0]
        expected.append(("v1", int((scores >= scores[following]).sum())))
    assert together.ranks == ranks == expected  # k = all items: the online rank is the offline rank
    top5 = process_batch(model, {"a": clicks}, {}, k=5, ring_size=50, received_at=0.0).ranks
    assert top5 == [(v, r if r <= 5 else 0) for v, r in expected]  # outside the published top-k: a miss


def test_a_session_with_only_duplicates_keeps_the_state_of_a_model_of_another_size(tmp_path: Path) -> None:
    """Its state belongs to an older model whose state size differs (e.g. after a swap between families); the
    batch's other sessions are still processed (this used to fail the whole batch in np.stack)."""
    old, new = _model(tmp_path, "v1", family="gru4rec"), _model(tmp_path, "v2", seed=1, family="sasrec")
    assert old.network.state_size != new.network.state_size
    stale = process_batch(old, {"a": [_click("a", "i3", 4)]}, {}, k=5, ring_size=50, received_at=0.0).states["a"]
    out = process_batch(new, {"a": [_click("a", "i3", 4)], "b": [_click("b", "i5", 5), _click("b", "i6", 6)]},
                        {"a": stale}, k=5, ring_size=50, received_at=0.0)
    assert out.duplicates == 1 and list(out.states) == ["b"] and len(out.predictions) == 2
    assert stale.model_version == "v1" and stale.model_state.shape == (old.network.state_size,)


def test_vectorised_ranks_equal_the_rank_of_each_click() -> None:
    from stream_worker.processor import rank_in_previous, ranks_in_previous

    rng = np.random.default_rng(3)
    tops = rng.integers(0, 12, size=(200, 6)).astype(np.uint32)  # repeated hashes: the first match counts
    scores = rng.integers(0, 4, size=(200, 6)).astype(np.float32)  # ties count against
    clicked = rng.integers(0, 14, size=200).astype(np.uint32)  # 12, 13: never shown
    expected = [rank_in_previous(t, s, int(c)) for t, s, c in zip(tops, scores, clicked, strict=True)]
    assert ranks_in_previous(tops, scores, clicked).tolist() == expected
    assert 0 in expected and max(expected) == 6


def test_re_sent_clicks_are_duplicates_within_a_batch_as_across_batches(tmp_path: Path) -> None:
    """The same click re-sent by the producer (event id, item and time), right after itself, applies once whether
    the two arrive in one batch or two; a reused id with another item or time is a new click."""
    model = _model(tmp_path)
    clicks = [_click("a", "i1", 0, "e1"), _click("a", "i1", 1, "e1", at=1000.0), _click("a", "i2", 2, "e1"),
              _click("a", "i2", 3, "e1", at=1002.0), _click("a", "i2", 4, "e1", at=1002.5), _click("a", "i2", 5)]
    together = process_batch(model, {"a": clicks}, {}, k=5, ring_size=50, received_at=0.0)
    state: SessionState | None = None
    duplicates = 0
    for click in clicks:
        out = process_batch(model, {"a": [click]}, {"a": state}, k=5, ring_size=50, received_at=0.0)
        duplicates += out.duplicates
        state = SessionState.decode(out.states["a"].encode()) if "a" in out.states else state
    assert together.duplicates == duplicates == 2  # offsets 1 and 3
    assert state is not None and together.states["a"].encode() == state.encode()
