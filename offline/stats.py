"""Summary statistics and diagnostic plots of canonical event frames."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400


def session_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts, session-length distribution, time range and daily volume of ``frame`` (JSON-serialisable).

    Session length = events per session. Days are UTC calendar days from the first to the last event,
    days without events included. Values that need at least one event are None for an empty frame.
    """
    n_events = len(frame)
    stats: dict[str, Any] = {
        "n_events": n_events,
        "n_sessions": int(frame["session_id"].nunique()),
        "n_items": int(frame["item_id"].nunique()),
    }
    if "user_id" in frame.columns:
        stats["n_users"] = int(frame["user_id"].nunique())
    keys = ("min", "median", "mean", "p90", "p99", "max")
    if n_events == 0:
        stats.update({f"session_length_{key}": None for key in keys})
        stats.update(
            {
                "time_start": None,
                "time_end": None,
                "time_start_iso": None,
                "time_end_iso": None,
                "n_days": 0,
                "events_per_day_mean": None,
            }
        )
        return stats
    lengths = _session_lengths(frame)
    stats.update(
        {
            "session_length_min": int(lengths.min()),
            "session_length_median": float(np.median(lengths)),
            "session_length_mean": float(lengths.mean()),
            "session_length_p90": float(np.percentile(lengths, 90)),
            "session_length_p99": float(np.percentile(lengths, 99)),
            "session_length_max": int(lengths.max()),
        }
    )
    timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
    start, end = float(timestamps.min()), float(timestamps.max())
    days = _day_numbers(timestamps)
    n_days = int(days.max() - days.min() + 1)
    stats.update(
        {
            "time_start": start,
            "time_end": end,
            "time_start_iso": datetime.fromtimestamp(start, tz=UTC).isoformat(),
            "time_end_iso": datetime.fromtimestamp(end, tz=UTC).isoformat(),
            "n_days": n_days,
            "events_per_day_mean": n_events / n_days,
        }
    )
    return stats


def write_plots(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``session_length_cdf.png`` and ``events_per_day.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        lengths = np.sort(_session_lengths(frame))
        if len(lengths):
            fraction = np.arange(1, len(lengths) + 1) / len(lengths)
            ax.step(lengths, fraction, where="post")
            if lengths.max() > 20:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("session length (events)")
        ax.set_ylabel("fraction of sessions with length <= x")
        ax.set_title(f"Session length CDF ({len(lengths)} sessions)")
        ax.grid(True, alpha=0.3)
        path = out / "session_length_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        written.append(path)
    finally:
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
        if len(timestamps):
            days = _day_numbers(timestamps)
            counts = np.bincount(days - days.min())
            dates = pd.to_datetime((days.min() + np.arange(len(counts))) * SECONDS_PER_DAY, unit="s")
            ax.bar(dates, counts, width=1.0)
            fig.autofmt_xdate()
        ax.set_xlabel("day (UTC)")
        ax.set_ylabel("events")
        ax.set_title(f"Events per day ({len(timestamps)} events)")
        path = out / "events_per_day.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        written.append(path)
    finally:
        plt.close(fig)
    logger.debug("wrote plots %s", [str(p) for p in written])
    return written


def _session_lengths(frame: pd.DataFrame) -> np.ndarray:
    codes, _ = pd.factorize(frame["session_id"])
    return np.bincount(codes) if len(codes) else np.zeros(0, dtype=np.int64)


def _day_numbers(timestamps: np.ndarray) -> np.ndarray:
    return np.floor(timestamps / SECONDS_PER_DAY).astype(np.int64)
