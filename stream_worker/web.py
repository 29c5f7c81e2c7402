"""The worker's web views: /health, /stats (JSON), /metrics (Prometheus text) and a session's latest top-k."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from stream_worker.batch_path import Partitions
from stream_worker.serving import ServingModel
from stream_worker.session_state import SessionState, StateDecodeError
from stream_worker.stats import HolderStatus, WorkerStats, prometheus_text

log = logging.getLogger(__name__)

SESSION_PATH = "/sessions/{session_id}/recommendations"
"""The read path: GET the latest top-k of a session (the session id percent-encoded in the path)."""
FORWARDED_HEADER = "X-Streamrec-Forwarded-By"
"""Set on a session read one worker forwards to another: the receiver answers itself or refuses (no second hop)."""
SERVED_BY_HEADER = "X-Streamrec-Served-By"
"""Canonical URL of the worker whose table answered a session read."""


class _Sized(Protocol):
    def size(self) -> int: ...


def register_views(app: Any, holder: HolderStatus, stats: WorkerStats, store: _Sized, partitions: Partitions) -> None:
    """Add the views to ``app`` (a faust.App)."""

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "model_version": holder.model.version})

    @app.page("/stats")
    async def stats_view(web: Any, request: Any) -> Any:
        return web.json(stats.snapshot(holder, consumer_lags(partitions, stats), store.size()))

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        text = prometheus_text(stats.snapshot(holder, consumer_lags(partitions, stats), store.size()))
        return web.text(text, content_type="text/plain; version=0.0.4")


def consumer_lags(partitions: Partitions, stats: WorkerStats) -> dict[int, int]:
    """Per assigned clicks partition: high-water mark minus the next offset to process."""
    lags = {}
    try:
        assigned = partitions.assigned()
    except Exception:  # consumer not started yet
        return {}
    for partition in assigned:
        highwater = partitions.highwater(partition)
        if highwater is not None:
            lags[partition] = max(int(highwater) - stats.next_offset(partition), 0)
    return lags


# ------------------------------------------------------------------------------------------------ session reads


class _SessionReader(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...


class _ServedModel(Protocol):
    @property
    def model(self) -> ServingModel: ...


def session_partition(session_id: str, partitions: int) -> int:
    """Partition of the clicks topic, and so of the sessions table, that holds ``session_id``.

    The clicks key is the session id's UTF-8 bytes and producers use Kafka's default partitioner, murmur2 of the
    key modulo the partition count (the Java client, kafka-python and aiokafka; librdkafka only with
    ``partitioner=murmur2_random``). The worker stores a session in the table partition its clicks came from,
    and the table is co-partitioned with clicks (the worker refuses to start otherwise), so this is also the
    partition Faust's router computes for the key on the changelog topic: aiokafka's default partitioner.
    """
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(partitions))
    return int(DefaultPartitioner()(session_id.encode("utf-8"), every, every))


def resolve_top(state: SessionState, model: ServingModel) -> tuple[list[str], list[float]]:
    """The item ids and scores of the top-k stored with ``state`` (as 32-bit item hashes), best first.

    Two items of the catalogue may share a 32-bit hash: the stored score then tells them apart (the state's
    own scores, or the popularity for a session served by popularity). Items the served model cannot name,
    which happens only when ``model`` is not the version that made the top-k (a swap since the session's last
    click), are left out.
    """
    same_version = state.model_version == model.version
    reference: np.ndarray | None = None  # (n_items,) the scores the top-k was taken from, only on a collision
    items: list[str] = []
    scores: list[float] = []
    stored = np.asarray(state.last_scores, dtype=np.float32)
    for options, score in zip(model.indices_of_hash32(state.last_top), stored, strict=True):
        if len(options) == 1:
            index = int(options[0])
        elif len(options) == 0 or not same_version:
            continue
        else:
            if reference is None:
                reference = _reference_scores(state, model, len(stored))
            index = int(options[np.argmin(np.abs(reference[options] - score))])
        items.append(str(model.item_ids[index]))
        scores.append(float(str(score)))  # the float32's shortest form, as the Prediction JSON has it
    return items, scores


def _reference_scores(state: SessionState, model: ServingModel, k: int) -> np.ndarray:
    if state.known_count > 0:
        return np.asarray(model.network.scores(state.model_state[None, :]), dtype=np.float32)[0]
    popular = model.popular(k)  # a session with no known item was given the k most popular items
    reference = np.full(len(model.item_ids), -np.inf, dtype=np.float32)
    reference[popular.items[0]] = popular.scores[0]
    return reference


def session_answer(session_id: str, partition: int, state: SessionState, model: ServingModel) -> dict[str, Any]:
    """The JSON body of a session read: its latest top-k, the model version that made it, the path (model or
    popularity) and the event time of the session's last click."""
    items, scores = resolve_top(state, model)
    return {
        "session_id": session_id,
        "items": items,
        "scores": scores,
        "model_version": state.model_version,
        "path": "model" if state.known_count > 0 else "popularity",
        "event_timestamp": state.last_timestamp,
        "event_count": state.event_count,
        "partition": partition,
    }


def _same_worker(url: str, other: str) -> bool:
    from yarl import URL

    a, b = URL(url), URL(other)
    return (a.host, a.port) == (b.host, b.port)


def register_session_reads(app: Any, table: Any, holder: _ServedModel, store: _SessionReader, partitions: int,
                           forward_timeout_s: float = 5.0) -> None:
    """Add ``GET /sessions/{session_id}/recommendations`` to ``app`` (a faust.App) for ``table`` (the sessions
    table, ``partitions`` partitions, read through ``store``).

    The worker that owns the session's partition answers from its RocksDB; any other worker forwards the request
    there once (owners come from Faust's table routing: the assignor's changelog distribution, known to every
    member after each rebalance). 404 for a session the table does not hold; 503 with ``Retry-After`` while
    the partition has no owner yet, moves (rebalance, recovery) or its owner cannot be reached.
    """
    from faust.types import TP

    me = str(app.conf.canonical_url)
    changelog = str(table.changelog_topic.get_topic_name())

    def unavailable(view: Any, partition: int, reason: str) -> Any:
        return view.json({"error": reason, "partition": partition}, status=503, headers={"Retry-After": "1"})

    def owner_of(partition: int) -> str | None:
        try:
            distribution = app.router.table_metadata(table.name)
        except Exception:  # no assignment received yet
            return None
        for url, topics in distribution.items():
            if partition in topics.get(changelog, ()):
                return str(url)
        return None

    async def forward(view: Any, request: Any, owner: str, partition: int) -> Any:
        import aiohttp
        from yarl import URL

        target = URL(owner.rstrip("/") + request.raw_path, encoded=True)
        try:
            async with app.http_client.get(target, headers={FORWARDED_HEADER: me},
                                           timeout=aiohttp.ClientTimeout(total=forward_timeout_s)) as response:
                body = await response.read()
                headers = {name: response.headers[name] for name in (SERVED_BY_HEADER, "Retry-After")
                           if name in response.headers}
                return view.bytes(body, content_type=response.content_type, status=response.status,
                                  headers=headers)
        except (TimeoutError, aiohttp.ClientError) as error:
            log.info("session read for partition %d: owner %s unreachable (%r)", partition, owner, error)
            return unavailable(view, partition, f"the worker that owns partition {partition} did not answer")

    @app.page(SESSION_PATH)
    async def session_recommendations(view: Any, request: Any, session_id: str) -> Any:
        try:
            key = session_id.encode("utf-8")
        except UnicodeEncodeError:  # (lone surrogates: no click can carry such an id)
            return view.json({"error": "unknown session", "session_id": None}, status=404)
        partition = session_partition(session_id, partitions)
        owner = owner_of(partition)
        if owner is None:
            return unavailable(view, partition, f"no worker owns partition {partition} yet")
        if not _same_worker(owner, me):
            if FORWARDED_HEADER in request.headers:  # the two workers disagree: the assignment is changing
                return unavailable(view, partition, f"partition {partition} is moving between workers")
            return await forward(view, request, owner, partition)
        if app.rebalancing or not app.tables.actives_ready or not app.assignor.is_active(TP(changelog, partition)):
            return unavailable(view, partition, f"partition {partition} is being assigned or restored")
        raw = store.get(partition, key)
        if raw is None:
            return view.json({"error": "unknown session", "session_id": session_id}, status=404,
                             headers={SERVED_BY_HEADER: me})
        try:
            state = SessionState.decode(raw)
        except StateDecodeError as error:
            log.error("session read: %r in partition %d is not a session state (%s)", session_id, partition, error)
            return view.json({"error": "unreadable session state", "session_id": session_id}, status=500)
        return view.json(session_answer(session_id, partition, state, holder.model), headers={SERVED_BY_HEADER: me})
