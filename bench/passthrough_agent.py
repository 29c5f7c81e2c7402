"""Baseline for bench/stream_throughput.py: a Faust agent that forwards every click, with the worker's
batching and producer path (BatchSender) but no validation, model or table. Same STREAMREC_ settings."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from stream_worker.app import make_faust_app
from stream_worker.batch_sender import BatchSender
from stream_worker.settings import WorkerSettings


def build_passthrough(settings: WorkerSettings) -> faust.App:
    app = make_faust_app(settings)
    clicks = app.topic(settings.clicks_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    output = app.topic(settings.predictions_topic, partitions=settings.partitions)

    sender = BatchSender(lambda: app.producer._ensure_producer())  # type: ignore[attr-defined]

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
