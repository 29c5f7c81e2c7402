"""Run the Faust worker process (what ``streamrec worker`` calls)."""

from __future__ import annotations

import logging
from pathlib import Path

import faust
from threadpoolctl import threadpool_limits

from stream_worker.app import build_app
from stream_worker.broker_identity import prepare_data_dir, watch_broker_identity
from stream_worker.model_holder import ModelHolder
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings, log_level: str = "info") -> None:
    """Load the current model (fails fast without one), build the app, make the local table data belong to the
    broker (``stream_worker/broker_identity.py``) and run until SIGTERM/SIGINT."""
    # Small matrix products: BLAS threads only fight the event loop, consumer thread and broker for 2 cores.
    threadpool_limits(settings.blas_threads)
    holder = ModelHolder(settings.models_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings, holder)
    identity = prepare_data_dir(settings, Path(app.conf.tabledir))  # before Faust opens any table
    watch_broker_identity(app, settings, identity)
    log.info("worker %s serving model %s from %s", settings.app_id, holder.model.version, settings.models_dir)
    worker = faust.Worker(app, loglevel=log_level, quiet=True, override_logging=False)
    worker.execute_from_commandline()
