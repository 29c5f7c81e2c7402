"""Publishing model updates: a new current version's manifest to the "model-updates" topic."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from modelkit.registry import Publisher
from schemas import ModelManifest
from stream_worker.settings import WorkerSettings, client_config

log = logging.getLogger(__name__)


def kafka_publisher(config: str | Mapping[str, Any] | WorkerSettings, topic: str = "model-updates") -> Publisher:
    """A publisher sending each manifest to ``topic`` (key = version, value = manifest JSON) with kafka-python.

    The topic is created with 1 partition if it does not exist (the worker reads it as one ordered stream).
    """
    def publish(manifest: ModelManifest) -> None:
        from stream_worker.broker import create_topics
        from stream_worker.replay import produce_raw

        target = client_config(config)
        create_topics(target, {topic: 1})
        produce_raw(target, topic, [(manifest.version.encode(), manifest.model_dump_json().encode())])
        log.info("published model update %s to %s", manifest.version, topic)

    return publish
