"""Holds the model the worker serves and swaps in new versions (loaded off the event loop, validated first)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from modelkit.artifact import ArtifactError, current_version, load_artifact
from stream_worker.serving import ServingModel

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def load_serving_model(models_dir: Path, version: str) -> ServingModel:
    """Load ``models_dir/version``; refuses names that are not plain version directory names."""
    if not _VERSION.match(version):
        raise ArtifactError(f"refused model version name {version!r}")
    return ServingModel(load_artifact(models_dir / version))


class ModelHolder:
    """The current ServingModel; a swap is one reference assignment, so a batch sees one version throughout."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        version = current_version(models_dir)
        if version is None:
            raise ArtifactError(f"no model in {models_dir}: train one first (streamrec train ... --out {models_dir})")
        self.model = load_serving_model(models_dir, version)
        self._pointer: str | None = version
        self._lock = asyncio.Lock()
        self.swaps = 0
        self.failures = 0
        self.last_error = ""

    async def load_version(self, version: str) -> bool:
        """Swap to ``version`` unless it is already served; a broken artifact is refused and the old one stays."""
        async with self._lock:
            if version == self.model.version:
                return True
            loop = asyncio.get_running_loop()
            try:
                model = await loop.run_in_executor(None, load_serving_model, self.models_dir, version)
            except (ArtifactError, OSError) as error:
                self.failures += 1
                self.last_error = f"{version}: {error}"
                log.error("model %s refused, still serving %s: %s", version, self.model.version, error)
                return False
            previous, self.model = self.model.version, model
            self.swaps += 1
            log.info("model swapped: %s -> %s (%d items)", previous, model.version, len(model.item_ids))
            return True

    async def follow_current(self) -> None:
        """Load the version ``current`` points at when the pointer has moved since last time."""
        version = current_version(self.models_dir)
        if version is not None and version != self._pointer:
            self._pointer = version
            await self.load_version(version)
