"""Baseline for bench/stream_throughput.py: a Faust agent that forwards every click, with the worker's
delivery and producer path but no validation, model or table. Same STREAMREC_ settings: with
``STREAMREC_BATCH_DELIVERY`` (default) each fetch is handed over as one list (stream_worker/transport.py), its
records sent as record batches (BatchSender) and acknowledged to Faust once the broker acknowledged them (the next
fetch is handed over meanwhile, as the worker's pipeline does); without it, the agent's take_events batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import faust

from stream_worker.app import make_faust_app
from stream_worker.batch_sender import BatchSender
from stream_worker.record import Record
from stream_worker.settings import WorkerSettings


def build_passthrough(settings: WorkerSettings) -> faust.App:
    app = make_faust_app(settings)
    clicks = app.topic(settings.clicks_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    output = app.topic(settings.predictions_topic, partitions=settings.partitions)

    sender = BatchSender(lambda: app.producer._ensure_producer())  # type: ignore[attr-defined]

    async def forward_batch(records: Sequence[Record], create_times_ms: Sequence[int | None],
                            fetched_at: float) -> Awaitable[Any]:
        for record in records:
            sender.add(settings.predictions_topic, record.key, record.value)
        return asyncio.gather(*await sender.flush())

    if settings.batch_delivery:
        app.batch_handlers[settings.clicks_topic] = forward_batch

    @app.agent(clicks)
    async def forward(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            for event in events:
                sender.add(settings.predictions_topic, event.message.key, event.message.value)
            await asyncio.gather(*await sender.flush())

    @app.task
    async def declare() -> None:
        await output.maybe_declare()

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({"model_version": "passthrough"})

    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    settings = WorkerSettings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(build_passthrough(settings), loglevel="warning", quiet=True, override_logging=False)
    worker.execute_from_commandline()
