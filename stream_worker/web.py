"""The worker's web views: /health, /stats (JSON) and /metrics (Prometheus text)."""

from __future__ import annotations

from typing import Any, Protocol

from stream_worker.batch_path import Partitions
from stream_worker.stats import HolderStatus, WorkerStats, prometheus_text


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
