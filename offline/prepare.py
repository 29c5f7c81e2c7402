"""One-call data preparation: load, clean, split (time or leave-one-out), atomically write TSVs, stats, plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline.cleaning import LeaveOneOut, Split, clean, leave_one_out_split, time_split
from offline.loaders import ML_100K, SESSION_TSV_HEADER, load_events, movielens_100k_path
from offline.stats import session_stats, write_plots

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.tsv", "valid": "valid.tsv", "test": "test.tsv", "train_full": "train_full.tsv"}
STATS_FILE = "stats.json"
SPLITS = ("time", "leave-one-out")


def prepare(
    input_path: str | Path,
    fmt: str,
    out_dir: str | Path,
    *,
    session_gap_s: float = 3600.0,
    min_rating: float | None = None,
    min_user_events: int = 0,
    min_session_length: int = 2,
    min_item_support: int = 5,
    split: str = "time",
    test_days: float = 1.0,
    valid_days: float = 1.0,
) -> dict[str, Any]:
    """Load ``input_path`` (format ``fmt``), clean, split and write the dataset into ``out_dir``.

    ``min_user_events`` drops users with fewer events before sessionizing (formats with users); cleaning
    then drops sessions shorter than ``min_session_length`` and items with fewer than ``min_item_support``
    events, recursively (0 disables either rule). ``split`` is "time" (whole sessions by the day they end,
    ``test_days``/``valid_days``) or "leave-one-out" (each sequence's last event is its test target, the one
    before its validation target; sequences of fewer than 3 events stay whole in train).

    Writes train.tsv, valid.tsv, test.tsv, train_full.tsv (session-tsv format), stats.json and the plots
    into a temporary sibling directory that replaces ``out_dir`` only once everything is written; on any
    failure ``out_dir`` is untouched (absent or the previous version). Returns the report (the content of
    stats.json plus ``out_dir``). Raises DataFormatError for bad input and ValueError when cleaning or the
    split leaves no train or test sessions.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    raw = load_events(
        input_path, fmt, session_gap_s=session_gap_s, min_rating=min_rating, min_user_events=min_user_events
    )
    cleaned = clean(raw, min_session_length=min_session_length, min_item_support=min_item_support)
    if cleaned.empty:
        raise ValueError(
            f"no events left after cleaning {input_path} (min_user_events={min_user_events}, "
            f"min_session_length={min_session_length}, min_item_support={min_item_support}, "
            f"{len(raw)} raw events)"
        )
    parts: Split | LeaveOneOut
    if split == "time":
        parts = time_split(cleaned, test_days=test_days, valid_days=valid_days)
        for part in ("train", "test"):
            if getattr(parts, part).empty:
                raise ValueError(
                    f"the time split of {input_path} leaves an empty {part} set (test_days={test_days}, "
                    f"valid_days={valid_days}, data spans {_span_days(cleaned):.2f} days)"
                )
        if parts.valid.empty and valid_days > 0:
            logger.warning("the time split leaves an empty validation set")
    else:
        parts = leave_one_out_split(cleaned)
        if parts.test.empty:
            raise ValueError(
                f"the leave-one-out split of {input_path} holds out nothing: no sequence has at least "
                f"{parts.min_length} events after cleaning"
            )

    is_ml_100k = fmt == "movielens" and str(input_path) == ML_100K
    resolved = movielens_100k_path() if is_ml_100k else Path(input_path)
    whole_users = fmt == "user-sequence" or math.isinf(session_gap_s)
    parameters: dict[str, Any] = {
        "input_path": str(input_path),
        "input_file": str(Path(resolved).absolute()),
        "format": fmt,
        "session_gap_s": None if whole_users else float(session_gap_s),  # None: a user is one session
        "min_rating": None if min_rating is None else float(min_rating),
        "min_user_events": int(min_user_events),
        "min_session_length": int(min_session_length),
        "min_item_support": int(min_item_support),
        "split": split,
    }
    report: dict[str, Any] = {
        "parameters": parameters,
        "raw": session_stats(raw),
        "cleaned": session_stats(cleaned),
        "splits": {name: session_stats(getattr(parts, name)) for name in SPLIT_FILES},
        "dropped": _drop_counts(raw, cleaned, parts),
        "files": [*SPLIT_FILES.values(), STATS_FILE],
    }
    if isinstance(parts, Split):
        parameters.update(test_days=float(test_days), valid_days=float(valid_days))
        report["boundaries"] = {
            "test_start": parts.test_start,
            "test_start_iso": _iso(parts.test_start),
            "valid_start": parts.valid_start,
            "valid_start_iso": None if parts.valid_start is None else _iso(parts.valid_start),
        }
    else:
        report["leave_one_out"] = {
            "min_sequence_length": parts.min_length,
            "held_out_sequences": parts.held_out_sequences,
            "train_only_sequences": parts.train_only_sequences,
            "valid_targets_unseen_in_train": parts.valid_targets_unseen,
            "test_targets_unseen_in_train": parts.test_targets_unseen,
        }

    def fill(directory: Path) -> None:
        for name, file_name in SPLIT_FILES.items():
            write_session_tsv(getattr(parts, name), directory / file_name)
        plots = write_plots(cleaned, directory)
        report["files"] = [*SPLIT_FILES.values(), STATS_FILE, *(p.name for p in plots)]
        with (directory / STATS_FILE).open("w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, allow_nan=False)
            handle.write("\n")

    _replace_directory(out, fill)
    logger.info(
        "prepared %s -> %s (%s split): train %d / valid %d / test %d events",
        input_path,
        out,
        split,
        len(parts.train),
        len(parts.valid),
        len(parts.test),
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


def _drop_counts(raw: pd.DataFrame, cleaned: pd.DataFrame, split: Split | LeaveOneOut) -> dict[str, int]:
    counts = {
        "cleaning_events": len(raw) - len(cleaned),
        "cleaning_sessions": int(raw["session_id"].nunique() - cleaned["session_id"].nunique()),
        "cleaning_items": int(raw["item_id"].nunique() - cleaned["item_id"].nunique()),
    }
    if isinstance(split, Split):
        counts.update(
            dropped_unseen_valid=split.dropped_unseen_valid,
            dropped_unseen_test=split.dropped_unseen_test,
            dropped_short_valid=split.dropped_short_valid,
            dropped_short_test=split.dropped_short_test,
        )
    return counts


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
