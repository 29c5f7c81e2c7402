"""One batch of valid clicks -> new session states and one prediction per click (pure: no Kafka, no Faust)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from schemas import SCHEMA_VERSION, ClickEvent
from stream_worker.serving import ServingModel
from stream_worker.session_state import NO_EVENT, SessionState, event_hash, item_hash

PATH_MODEL = "model"
PATH_POPULARITY = "popularity"


class Click(NamedTuple):
    """A validated click and where it came from (a tuple: built once per click, cheaper than a dataclass)."""

    event: ClickEvent
    partition: int
    offset: int


@dataclass
class BatchOutcome:
    """What processing a batch produced."""

    predictions: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, Prediction JSON), in order
    states: dict[str, SessionState] = field(default_factory=dict)  # sessions that changed
    duplicates: int = 0  # clicks already applied (redelivered or re-sent): state not advanced, no prediction
    recomputed: int = 0  # sessions whose state came from an older model version, rebuilt from their ring
    ranks: list[tuple[str, int]] = field(default_factory=list)  # (model version, rank of the click in the
    # prediction that preceded it; 0 = not in the published top-k), for the online evaluation
    by_path: dict[str, int] = field(default_factory=lambda: {PATH_MODEL: 0, PATH_POPULARITY: 0})


def click_hash(click: Click) -> int:
    """event_hash of a click, or NO_EVENT when the producer gave it no event id."""
    event = click.event
    return event_hash(event.event_id, event.item_id, event.timestamp) if event.event_id is not None else NO_EVENT


def is_duplicate(state: SessionState, click: Click) -> bool:
    """Already applied: offset not newer than the last applied one (redelivery), or the same click as the last
    one re-sent by the producer (same event id, item and time at a new offset)."""
    if click.offset <= state.last_offset:
        return True
    hashed = click_hash(click)
    return hashed != NO_EVENT and hashed == state.last_event_hash


def rank_in_previous(top: np.ndarray, scores: np.ndarray, hashed32: int) -> int:
    """Rank of a clicked item (its item_hash32) in a published top-k; ties count against; 0 if absent."""
    where = np.flatnonzero(top == hashed32)
    if len(where) == 0:
        return 0
    return int((scores >= scores[where[0]]).sum())


def prediction_json(
    click: Click,
    items: np.ndarray,  # (k,) item indices, best first
    scores: np.ndarray,  # (k,)
    model: ServingModel,
    path: str,
    produced_at: float,
    received_at: float,
) -> bytes:
    """Serialise one Prediction: the fields of schemas.Prediction, written by orjson (a pydantic model per click
    costs more than the model step); tests validate the output against the contract."""
    event = click.event
    return orjson.dumps({
        "schema_version": SCHEMA_VERSION,
        "session_id": event.session_id,
        "event_id": event.event_id,
        "partition": click.partition,
        "offset": click.offset,
        "items": model.item_ids[items].tolist(),
        "scores": scores,
        "model_version": model.version,
        "path": path,
        "event_timestamp": event.timestamp,
        "produced_at": produced_at,
        "latency_ms": max(produced_at - received_at, 0.0) * 1000.0,
    }, option=orjson.OPT_SERIALIZE_NUMPY)


def ranks_in_previous(tops: np.ndarray, scores: np.ndarray, hashed32: np.ndarray) -> np.ndarray:
    """``rank_in_previous`` of many clicks at once: tops (n, k) item_hash32, scores (n, k), hashed32 (n,)."""
    match = tops == hashed32[:, None]
    first = match.argmax(axis=1)
    target = scores[np.arange(len(scores)), first]
    return np.where(match.any(axis=1), (scores >= target[:, None]).sum(axis=1), 0)


# Item hashes (64-bit blake2b of the id) for the ring and the online ranks: the same few thousand items are clicked
# over and over, so they are remembered instead of hashed per click (bounded: unknown ids from hostile input).
_cached_item_hash = functools.lru_cache(maxsize=1 << 17)(item_hash)


def _same_click(a: ClickEvent, b: ClickEvent) -> bool:
    """Is ``event_hash`` of the two equal (the producer re-sent ``b``)? Compares what the hash hashes; the string
    is only built when an id contains the separator (two different id pairs can then hash the same)."""
    if a.event_id == b.event_id and a.item_id == b.item_id:
        return repr(a.timestamp) == repr(b.timestamp)
    ids = (a.event_id or "", a.item_id, b.event_id or "", b.item_id)
    if any("\x1f" in part for part in ids):
        return f"{a.event_id}\x1f{a.item_id}\x1f{a.timestamp!r}" == f"{b.event_id}\x1f{b.item_id}\x1f{b.timestamp!r}"
    return False


_NO_TOP = np.zeros(0, np.uint32)
_NO_SCORES = np.zeros(0, np.float32)


def new_state(model: ServingModel, initial: np.ndarray | None = None) -> SessionState:
    """A session's first state; ``initial`` (the model's initial state) may be shared: process_batch replaces a
    state's arrays, never writes into them."""
    return SessionState(model.version, model.initial_state() if initial is None else initial,
                        last_top=_NO_TOP, last_scores=_NO_SCORES)


def process_batch(
    model: ServingModel,
    clicks_by_session: dict[str, list[Click]],
    states: dict[str, SessionState | None],
    k: int,
    ring_size: int,
    received_at: float,
) -> BatchOutcome:
    """Apply each session's clicks in order, batched across sessions, and predict after every click.

    Clicks on items the model does not know leave the model state as it is (they still enter the ring);
    a session with no known click yet gets the popularity top-k. The ring keeps the last ``ring_size`` clicks,
    or the model's window if that is longer: a windowed model's state rebuilt from the ring after a model swap
    is then the state of the whole session.

    The model step, the top-k, the online ranks and the item lookups run on NumPy arrays per click position
    (the n-th fresh click of every session at once); the Python left per click is the duplicate check, the ring
    and the Prediction JSON.
    """
    outcome = BatchOutcome()
    ring_size = max(ring_size, model.window)
    session_ids = list(clicks_by_session)
    current: list[SessionState] = []
    fresh: list[list[Click]] = []
    first_ranked: list[int] = []  # sessions whose first fresh click answers the prediction stored with the state
    initial = model.initial_state()
    for session_id in session_ids:
        state = states.get(session_id) or new_state(model, initial)
        clicks: list[Click] = []
        previous: ClickEvent | None = None  # the last click applied in this batch
        for click in clicks_by_session[session_id]:
            event = click.event
            if click.offset <= state.last_offset:
                outcome.duplicates += 1  # redelivered
                continue
            if event.event_id is not None:
                if previous is None:
                    duplicate = event_hash(event.event_id, event.item_id, event.timestamp) == state.last_event_hash
                else:
                    duplicate = previous.event_id is not None and _same_click(event, previous)
                if duplicate:  # the same click as the last one, re-sent by the producer
                    outcome.duplicates += 1
                    continue
            clicks.append(click)
            previous = event
            # Mark as applied now so a duplicate later in the same batch is caught too.
            state.last_offset = click.offset
        if clicks:
            state.last_event_hash = click_hash(clicks[-1])
            if len(state.last_top):
                first_ranked.append(len(current))
        current.append(state)
        fresh.append(clicks)
    _rank_first_clicks(outcome, current, fresh, first_ranked)
    for state, clicks in zip(current, fresh, strict=True):
        if clicks and state.model_version != model.version:
            state.model_state, state.known_count = model.recompute(state.ring)
            state.model_version = model.version
            outcome.recomputed += 1
    if not current:
        return outcome
    # (n_sessions, state_size). A session whose clicks were all duplicates keeps its state as it is, which may
    # belong to an older model of another state size: it gets a placeholder row (it is neither stepped nor stored).
    placeholder = model.initial_state()
    model_states = np.stack([s.model_state if c else placeholder for s, c in zip(current, fresh, strict=True)])
    popular = model.popular(k)
    width = popular.items.shape[1]  # k, or the catalogue size if smaller (as top_k)
    shown = np.zeros((len(current), width), dtype=np.uint32)  # item_hash32 of each session's latest top-k
    shown_scores = np.zeros((len(current), width), dtype=np.float32)
    item_ids = model.item_ids
    version = model.version
    longest = max(len(c) for c in fresh)
    for position in range(longest):
        rows = [r for r, clicks in enumerate(fresh) if len(clicks) > position]
        events = [fresh[r][position].event for r in rows]
        items = np.array([model.index_of(event.item_id) for event in events], dtype=np.int64)
        known = items >= 0
        if known.any():
            stepped = [r for r, ok in zip(rows, known.tolist(), strict=True) if ok]
            model_states[stepped] = model.step(model_states[stepped], items[known])
        hashed = [_cached_item_hash(event.item_id) for event in events]
        model_slot = np.zeros(len(rows), dtype=bool)
        for i, (r, event, ok, hashed_item) in enumerate(zip(rows, events, known.tolist(), hashed, strict=True)):
            state = current[r]
            ring = state.ring
            ring.append(hashed_item)
            if len(ring) > ring_size:
                del ring[: len(ring) - ring_size]
            state.event_count += 1
            state.known_count += ok
            if event.timestamp > state.last_timestamp:
                state.last_timestamp = event.timestamp
            model_slot[i] = state.known_count > 0
        top_items = np.broadcast_to(popular.items[0], (len(rows), width)).copy()  # (rows, k)
        top_scores = np.broadcast_to(popular.scores[0], (len(rows), width)).copy()
        if model_slot.any():
            model_rows = [r for r, ok in zip(rows, model_slot.tolist(), strict=True) if ok]
            top = model.recommend(model_states[model_rows], k)
            if top.scores.dtype != top_scores.dtype:  # (every family scores in float32)
                top_scores = top_scores.astype(np.result_type(top_scores, top.scores))
            top_items[model_slot] = top.items
            top_scores[model_slot] = top.scores
        produced_at = time.time()
        if position > 0:  # each click answers the prediction made for the previous click of its session
            ranks = ranks_in_previous(shown[rows], shown_scores[rows],
                                      np.array(hashed, dtype=np.uint64).astype(np.uint32))
            outcome.ranks.extend((version, rank) for rank in ranks.tolist())
        shown[rows] = model.item_hash32[top_items]
        shown_scores[rows] = top_scores
        n_model = int(model_slot.sum())
        outcome.by_path[PATH_MODEL] += n_model
        outcome.by_path[PATH_POPULARITY] += len(rows) - n_model
        latency_ms = max(produced_at - received_at, 0.0) * 1000.0
        dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        for i, (r, ids, on_model) in enumerate(zip(rows, item_ids[top_items].tolist(), model_slot.tolist(),
                                                   strict=True)):
            click = fresh[r][position]
            event = click.event
            outcome.predictions.append((session_ids[r], dumps({
                "schema_version": SCHEMA_VERSION,
                "session_id": event.session_id,
                "event_id": event.event_id,
                "partition": click.partition,
                "offset": click.offset,
                "items": ids,
                "scores": top_scores[i],
                "model_version": version,
                "path": PATH_MODEL if on_model else PATH_POPULARITY,
                "event_timestamp": event.timestamp,
                "produced_at": produced_at,
                "latency_ms": latency_ms,
            }, option=option)))
    for r, session_id in enumerate(session_ids):
        if fresh[r]:
            state = current[r]
            state.model_state = model_states[r].copy()
            state.last_top, state.last_scores = shown[r], shown_scores[r]
            outcome.states[session_id] = state
    return outcome


def _rank_first_clicks(outcome: BatchOutcome, current: list[SessionState], fresh: list[list[Click]],
                       ranked: list[int]) -> None:
    """Online ranks of each session's first fresh click in the prediction stored with its state (in session
    order, under the version that made it)."""
    if not ranked:
        return
    width = len(current[ranked[0]].last_top)
    same = [r for r in ranked if len(current[r].last_top) == width]
    ranks: dict[int, int] = {}
    if len(same) > 1:
        hashed = np.array([_cached_item_hash(fresh[r][0].event.item_id) & 0xFFFFFFFF for r in same], dtype=np.uint32)
        found = ranks_in_previous(np.stack([current[r].last_top for r in same]),
                                  np.stack([current[r].last_scores for r in same]), hashed)
        ranks = dict(zip(same, found.tolist(), strict=True))
    for r in ranked:
        state = current[r]
        rank = ranks.get(r)
        if rank is None:
            rank = rank_in_previous(state.last_top, state.last_scores,
                                    _cached_item_hash(fresh[r][0].event.item_id) & 0xFFFFFFFF)
        outcome.ranks.append((state.model_version, rank))
