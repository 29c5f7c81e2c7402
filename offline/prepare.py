"""One-call data preparation: load, clean, time-split, then atomically write session TSVs, stats and plots."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline.cleaning import Split, clean, time_split
from offline.loaders import ML_100K, SESSION_TSV_HEADER, load_events, movielens_100k_path
from offline.stats import session_stats, write_plots

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.tsv", "valid": "valid.tsv", "test": "test.tsv", "train_full": "train_full.tsv"}
STATS_FILE = "stats.json"


def prepare(
    input_path: str | Path,
    fmt: str,
    out_dir: str | Path,
    *,
    session_gap_s: float = 3600.0,
    min_rating: float | None = None,
    min_session_length: int = 2,
    min_item_support: int = 5,
    test_days: float = 1.0,
    valid_days: float = 1.0,
) -> dict[str, Any]:
    """Load ``input_path`` (format ``fmt``), clean, split by time and write the dataset into ``out_dir``.

    Writes train.tsv, valid.tsv, test.tsv, train_full.tsv (session-tsv format), stats.json and the plots
    into a temporary sibling directory that replaces ``out_dir`` only once everything is written; on any
    failure ``out_dir`` is untouched (absent or the previous version). Returns the report (the content of
    stats.json plus ``out_dir``). Raises DataFormatError for bad input and ValueError when cleaning or the
    split leaves no train or test sessions.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    raw = load_events(input_path, fmt, session_gap_s=session_gap_s, min_rating=min_rating)
    cleaned = clean(raw, min_session_length=min_session_length, min_item_support=min_item_support)
    if cleaned.empty:
        raise ValueError(
            f"no events left after cleaning {input_path} (min_session_length={min_session_length}, "
            f"min_item_support={min_item_support}, {len(raw)} raw events)"
        )
    split = time_split(cleaned, test_days=test_days, valid_days=valid_days)
    for part in ("train", "test"):
        if getattr(split, part).empty:
            raise ValueError(
                f"the time split of {input_path} leaves an empty {part} set (test_days={test_days}, "
                f"valid_days={valid_days}, data spans {_span_days(cleaned):.2f} days)"
            )
    if split.valid.empty and valid_days > 0:
        logger.warning("the time split leaves an empty validation set")

    is_ml_100k = fmt == "movielens" and str(input_path) == ML_100K
    resolved = movielens_100k_path() if is_ml_100k else Path(input_path)
    report: dict[str, Any] = {
        "parameters": {
            "input_path": str(input_path),
            "input_file": str(Path(resolved).absolute()),
            "format": fmt,
            "session_gap_s": float(session_gap_s),
            "min_rating": None if min_rating is None else float(min_rating),
            "min_session_length": int(min_session_length),
            "min_item_support": int(min_item_support),
            "test_days": float(test_days),
            "valid_days": float(valid_days),
        },
        "raw": session_stats(raw),
        "cleaned": session_stats(cleaned),
        "splits": {name: session_stats(getattr(split, name)) for name in SPLIT_FILES},
        "dropped": _drop_counts(raw, cleaned, split),
        "boundaries": {
            "test_start": split.test_start,
            "test_start_iso": _iso(split.test_start),
            "valid_start": split.valid_start,
            "valid_start_iso": None if split.valid_start is None else _iso(split.valid_start),
        },
        "files": [*SPLIT_FILES.values(), STATS_FILE],
    }

    def fill(directory: Path) -> None:
        for name, file_name in SPLIT_FILES.items():
            write_session_tsv(getattr(split, name), directory / file_name)
        plots = write_plots(cleaned, directory)
        report["files"] = [*SPLIT_FILES.values(), STATS_FILE, *(p.name for p in plots)]
        with (directory / STATS_FILE).open("w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, allow_nan=False)
            handle.write("\n")

    _replace_directory(out, fill)
    logger.info(
        "prepared %s -> %s: train %d / valid %d / test %d events",
        input_path,
        out,
        len(split.train),
        len(split.valid),
        len(split.test),
    )
    return {**report, "out_dir": str(out)}


def write_session_tsv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as session-tsv (header SessionId, ItemId, Time; Time in shortest round-trip form).

    Rows are grouped by session, sessions ordered by first event time (ties by session id), events by time
    (ties keep frame order), as in SessionArrays.
    """
    for column in ("session_id", "item_id"):
        if frame[column].astype("str").str.contains(r"[\t\r\n]", regex=True).any():
            raise ValueError(f"{column} values must not contain tabs or line breaks")
    n = len(frame)
    timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
    codes, uniques = pd.factorize(frame["session_id"], sort=True)
    first_time = np.full(len(uniques), np.inf)
    np.minimum.at(first_time, codes, timestamps)
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.lexsort((np.arange(len(uniques)), first_time))] = np.arange(len(uniques))
    order = np.lexsort((np.arange(n), timestamps, rank[codes]))
    out = pd.DataFrame(
        {
            SESSION_TSV_HEADER[0]: frame["session_id"].to_numpy(dtype=object)[order],
            SESSION_TSV_HEADER[1]: frame["item_id"].to_numpy(dtype=object)[order],
            SESSION_TSV_HEADER[2]: [repr(t) for t in timestamps[order].tolist()],
        }
    )
    out.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n", encoding="utf-8")


def _drop_counts(raw: pd.DataFrame, cleaned: pd.DataFrame, split: Split) -> dict[str, int]:
    return {
        "cleaning_events": len(raw) - len(cleaned),
        "cleaning_sessions": int(raw["session_id"].nunique() - cleaned["session_id"].nunique()),
        "cleaning_items": int(raw["item_id"].nunique() - cleaned["item_id"].nunique()),
        "dropped_unseen_valid": split.dropped_unseen_valid,
        "dropped_unseen_test": split.dropped_unseen_test,
        "dropped_short_valid": split.dropped_short_valid,
        "dropped_short_test": split.dropped_short_test,
    }


def _replace_directory(out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh sibling of ``out`` and rename it into place, replacing ``out`` only after success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = out.parent / f".{out.name}.tmp-{tag}"
    staging.mkdir()
    try:
        fill(staging)
        if out.exists() or out.is_symlink():
            previous = out.parent / f".{out.name}.old-{tag}"
            os.rename(out, previous)
            try:
                os.rename(staging, out)
            except BaseException:
                os.rename(previous, out)
                raise
            if previous.is_symlink():
                previous.unlink()
            else:
                shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _span_days(frame: pd.DataFrame) -> float:
    timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
    return float(timestamps.max() - timestamps.min()) / 86400.0 if len(timestamps) else 0.0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()
