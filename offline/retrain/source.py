"""Where a retrain cycle reads its window of clicks: a topic (through a reader handed in) or click log files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from offline.cleaning import SECONDS_PER_DAY
from offline.retrain.prepare import iso_utc

log = logging.getLogger(__name__)


class ReadSummary(Protocol):
    """What a topic reader reports about one read (e.g. ``stream_worker.topic_reader.ReadReport``)."""

    def to_dict(self) -> dict[str, Any]: ...


WindowReader = Callable[[str, float, float | None], tuple[pd.DataFrame, ReadSummary]]
"""``read(topic, window_s, now)``: the topic's events of the ``window_s`` seconds up to ``now`` (included), or up
to its newest event when ``now`` is None, as (session_id, item_id, timestamp), and a summary of the read.
The command line hands in ``stream_worker.topic_reader.click_window_reader(...)``."""


@dataclass(frozen=True)
class TopicSource:
    """Click events from a topic (e.g. the worker's input topic), read by ``read``, which the caller hands in."""

    topic: str
    read: WindowReader

    def describe(self) -> str:
        return f"topic {self.topic}"


@dataclass(frozen=True)
class FileSource:
    """Click events from files in one of offline.loaders.FORMATS."""

    paths: tuple[Path, ...]
    format: str
    session_gap_s: float = 3600.0
    min_rating: float | None = None

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)


Source = TopicSource | FileSource


def read_window(source: Source, window_s: float, now: float | None) -> tuple[pd.DataFrame, float, ReadSummary | None]:
    """Events of the window [end - window_s, end] and ``end`` (``now`` or the newest event)."""
    report: ReadSummary | None
    if isinstance(source, TopicSource):
        frame, report = source.read(source.topic, window_s, now)
    elif isinstance(source, FileSource):
        from offline.loaders import load_events

        if not source.paths:
            raise ValueError("no input files given")
        frames = [load_events(path, source.format, session_gap_s=source.session_gap_s, min_rating=source.min_rating)
                  for path in source.paths]
        frame = pd.concat([f[["session_id", "item_id", "timestamp"]] for f in frames], ignore_index=True)
        report = None
    else:
        raise TypeError(f"unknown source {source!r}")
    if len(frame) == 0:
        raise ValueError(f"no click events in {source.describe()}"
                         + (f" in the {window_s / SECONDS_PER_DAY:g} days before {now}" if now is not None else ""))
    end = float(now) if now is not None else float(frame["timestamp"].max())
    stamps = frame["timestamp"].to_numpy(np.float64)
    inside = (stamps >= end - window_s) & (stamps <= end)
    if not inside.any():
        raise ValueError(f"no click events in {source.describe()} in the {window_s / SECONDS_PER_DAY:g} days "
                         f"before {end}")
    log.info("window [%s, %s]: %d of %d events read from %s", iso_utc(end - window_s), iso_utc(end),
             int(inside.sum()), len(frame), source.describe())
    return frame[inside].reset_index(drop=True), end, report
