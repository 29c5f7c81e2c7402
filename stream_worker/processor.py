"""One batch of valid clicks -> new session states and one prediction per click (pure: no Kafka, no Faust)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from schemas import SCHEMA_VERSION, ClickEvent
from stream_worker.serving import ServingModel
from stream_worker.session_state import NO_EVENT, SessionState, event_hash, item_hash, item_hash32

PATH_MODEL = "model"
PATH_POPULARITY = "popularity"


@dataclass(frozen=True)
class Click:
    """A validated click and where it came from."""

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


def new_state(model: ServingModel) -> SessionState:
    return SessionState(model.version, model.initial_state())


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
    a session with no known click yet gets the popularity top-k.
    """
    outcome = BatchOutcome()
    session_ids = list(clicks_by_session)
    current: list[SessionState] = []
    fresh: list[list[Click]] = []
    for session_id in session_ids:
        state = states.get(session_id) or new_state(model)
        clicks = []
        for click in clicks_by_session[session_id]:
            if is_duplicate(state, click):
                outcome.duplicates += 1
                continue
            clicks.append(click)
            # Mark as applied now so a duplicate later in the same batch is caught too.
            state.last_offset = click.offset
            state.last_event_hash = click_hash(click)
        if clicks and len(state.last_top):  # the first click answers the prediction stored with the state
            outcome.ranks.append(
                (state.model_version,
                 rank_in_previous(state.last_top, state.last_scores, item_hash32(clicks[0].event.item_id)))
            )
        if clicks and state.model_version != model.version:
            state.model_state, state.known_count = model.recompute(state.ring)
            state.model_version = model.version
            outcome.recomputed += 1
        current.append(state)
        fresh.append(clicks)
    model_states = np.stack([s.model_state for s in current]) if current else None  # (n_sessions, state_size)
    longest = max((len(c) for c in fresh), default=0)
    for position in range(longest):
        rows = [r for r, clicks in enumerate(fresh) if len(clicks) > position]
        items = np.array([model.index_of(fresh[r][position].event.item_id) for r in rows], dtype=np.int64)
        known = items >= 0
        if known.any() and model_states is not None:
            stepped = [r for r, ok in zip(rows, known, strict=True) if ok]
            model_states[stepped] = model.step(model_states[stepped], items[known])
        hashed = {r: item_hash(fresh[r][position].event.item_id) for r in rows}
        for r, ok in zip(rows, known, strict=True):
            state, click = current[r], fresh[r][position]
            state.ring.append(hashed[r])
            if len(state.ring) > ring_size:
                del state.ring[: len(state.ring) - ring_size]
            state.event_count += 1
            state.known_count += int(ok)
            state.last_timestamp = max(state.last_timestamp, click.event.timestamp)
        model_rows = [r for r in rows if current[r].known_count > 0]
        top = model.recommend(model_states[model_rows], k) if model_rows and model_states is not None else None
        popular = model.popular(k)
        produced_at = time.time()
        slot = {r: i for i, r in enumerate(model_rows)}
        for r in rows:
            click = fresh[r][position]
            if top is not None and r in slot:
                top_items, scores, path = top.items[slot[r]], top.scores[slot[r]], PATH_MODEL
            else:
                top_items, scores, path = popular.items[0], popular.scores[0], PATH_POPULARITY
            state = current[r]
            if position > 0:  # answers the prediction made for the previous click of this batch
                rank = rank_in_previous(state.last_top, state.last_scores, hashed[r] & 0xFFFFFFFF)
                outcome.ranks.append((model.version, rank))
            state.last_top, state.last_scores = model.item_hash32[top_items], scores
            outcome.by_path[path] += 1
            outcome.predictions.append(
                (session_ids[r], prediction_json(click, top_items, scores, model, path, produced_at, received_at))
            )
    for r, session_id in enumerate(session_ids):
        if fresh[r] and model_states is not None:
            current[r].model_state = model_states[r].copy()
            outcome.states[session_id] = current[r]
    return outcome
