"""Recursive session/item filtering, the GRU4Rec-style time split and the leave-one-out split of event frames."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0
MIN_EVAL_SESSION_LENGTH = 2  # a valid/test session needs at least one next click to predict
MIN_HELD_OUT_LENGTH = 3  # leave-one-out: a sequence needs 1 training event besides its valid and test targets


def clean(frame: pd.DataFrame, min_session_length: int = 2, min_item_support: int = 5) -> pd.DataFrame:
    """Drop sessions shorter than ``min_session_length`` events and items with fewer than ``min_item_support``
    clicks, repeatedly, until neither rule removes anything. Surviving rows keep their order; index reset.
    A threshold of 0 (or 1) disables its rule, so both at 0 keep an already-preprocessed file as it is.
    """
    if min_session_length < 0 or min_item_support < 0:
        raise ValueError("min_session_length and min_item_support must be >= 0 (0 disables the rule)")
    session_codes, session_ids = pd.factorize(frame["session_id"])
    item_codes, item_ids = pd.factorize(frame["item_id"])
    keep = np.ones(len(frame), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        before = int(keep.sum())
        session_length = np.bincount(session_codes[keep], minlength=len(session_ids))
        keep &= session_length[session_codes] >= min_session_length
        item_support = np.bincount(item_codes[keep], minlength=len(item_ids))
        keep &= item_support[item_codes] >= min_item_support
        if int(keep.sum()) == before:
            break
    cleaned = frame[keep].reset_index(drop=True)
    logger.info(
        "cleaning (%d rounds): kept %d of %d events, %d of %d sessions, %d of %d items",
        rounds,
        len(cleaned),
        len(frame),
        cleaned["session_id"].nunique(),
        len(session_ids),
        cleaned["item_id"].nunique(),
        len(item_ids),
    )
    return cleaned


def restrict_to_items(frame: pd.DataFrame, items: Iterable[str]) -> tuple[pd.DataFrame, int]:
    """Rows of ``frame`` whose item is in ``items`` (order kept) and how many rows were dropped."""
    array_like = isinstance(items, pd.Series | pd.Index | np.ndarray)
    known = items if array_like else pd.Index(list(items), dtype="str")
    mask = frame["item_id"].isin(known).to_numpy()
    return frame[mask].reset_index(drop=True), int(len(frame) - mask.sum())


def drop_short_sessions(frame: pd.DataFrame, min_length: int) -> tuple[pd.DataFrame, int]:
    """Rows of sessions with at least ``min_length`` events and how many sessions were dropped."""
    sizes = frame.groupby("session_id", sort=False)["session_id"].transform("size").to_numpy()
    mask = sizes >= min_length
    dropped = int(frame.loc[~mask, "session_id"].nunique())
    return frame[mask].reset_index(drop=True), dropped


@dataclass(frozen=True)
class Split:
    """Train/valid/test sessions of a time split, with what the unseen-item filter removed.

    ``train_full`` holds every non-test session unfiltered (train plus valid before the unseen-item filter),
    for the final training run. ``dropped_unseen_*`` count events whose item is not in train;
    ``dropped_short_*`` count sessions that became shorter than 2 events after that.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    train_full: pd.DataFrame
    test_start: float  # sessions whose last event is at or after this time are test sessions
    valid_start: float | None  # same for valid among the non-test sessions; None without a validation set
    dropped_unseen_valid: int
    dropped_unseen_test: int
    dropped_short_valid: int
    dropped_short_test: int

    def counts(self) -> dict[str, int]:
        """Events/sessions per part and the drop counts, as plain ints."""
        result: dict[str, int] = {}
        for name in ("train", "valid", "test", "train_full"):
            part: pd.DataFrame = getattr(self, name)
            result[f"{name}_events"] = len(part)
            result[f"{name}_sessions"] = int(part["session_id"].nunique())
        result["dropped_unseen_valid"] = self.dropped_unseen_valid
        result["dropped_unseen_test"] = self.dropped_unseen_test
        result["dropped_short_valid"] = self.dropped_short_valid
        result["dropped_short_test"] = self.dropped_short_test
        return result


def time_split(frame: pd.DataFrame, test_days: float = 1.0, valid_days: float = 1.0) -> Split:
    """GRU4Rec protocol: whole sessions go to the part in which they end (their last event).

    Sessions ending at or after ``newest event - test_days`` are test; among the others, those ending at or
    after ``their newest event - valid_days`` are valid (``valid_days=0``: no validation set); the rest is
    train. Valid and test events whose item never occurs in train are dropped, then valid/test sessions
    shorter than 2 events. Every part keeps the input row order.
    """
    if not (math.isfinite(test_days) and test_days > 0):
        raise ValueError(f"test_days must be positive, got {test_days!r}")
    if not (math.isfinite(valid_days) and valid_days >= 0):
        raise ValueError(f"valid_days must be zero or positive, got {valid_days!r}")
    timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
    codes, uniques = pd.factorize(frame["session_id"])
    session_end = np.full(len(uniques), -np.inf)
    np.maximum.at(session_end, codes, timestamps)
    newest = float(timestamps.max()) if len(timestamps) else 0.0
    test_start = newest - test_days * SECONDS_PER_DAY
    is_test_session = session_end >= test_start
    is_valid_session = np.zeros(len(uniques), dtype=bool)
    valid_start: float | None = None
    rest_events = ~is_test_session[codes]
    if valid_days > 0 and rest_events.any():
        valid_start = float(timestamps[rest_events].max()) - valid_days * SECONDS_PER_DAY
        is_valid_session = ~is_test_session & (session_end >= valid_start)
    train_mask = ~(is_test_session | is_valid_session)[codes]
    train = frame[train_mask].reset_index(drop=True)
    train_full = frame[rest_events].reset_index(drop=True)
    train_items = pd.Index(pd.unique(train["item_id"]))
    valid, unseen_valid = restrict_to_items(frame[is_valid_session[codes]], train_items)
    test, unseen_test = restrict_to_items(frame[is_test_session[codes]], train_items)
    valid, short_valid = drop_short_sessions(valid, MIN_EVAL_SESSION_LENGTH)
    test, short_test = drop_short_sessions(test, MIN_EVAL_SESSION_LENGTH)
    split = Split(
        train=train,
        valid=valid,
        test=test,
        train_full=train_full,
        test_start=test_start,
        valid_start=valid_start,
        dropped_unseen_valid=unseen_valid,
        dropped_unseen_test=unseen_test,
        dropped_short_valid=short_valid,
        dropped_short_test=short_test,
    )
    logger.info("time split: %s", split.counts())
    return split


@dataclass(frozen=True)
class LeaveOneOut:
    """Train/valid/test sequences of a leave-one-out split (each session or user is one sequence).

    A sequence of n >= ``min_length`` events is held out: ``train`` gets its first n - 2 events, ``valid``
    its first n - 1 (the last of them is the validation target), ``test`` all n (the last is the test
    target), ``train_full`` its first n - 1 (train plus the validation target, for the final training
    run). Shorter sequences are whole in ``train`` and ``train_full`` and absent from ``valid`` and ``test``.
    ``*_targets_unseen`` count held-out targets whose item never occurs in ``train``: a model trained on it
    does not know them, so the evaluation drops those sequences.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    train_full: pd.DataFrame
    min_length: int
    held_out_sequences: int
    train_only_sequences: int
    valid_targets_unseen: int
    test_targets_unseen: int

    def counts(self) -> dict[str, int]:
        """Events/sequences per part, the sequences held out or kept whole in train, unseen targets."""
        result: dict[str, int] = {}
        for name in ("train", "valid", "test", "train_full"):
            part: pd.DataFrame = getattr(self, name)
            result[f"{name}_events"] = len(part)
            result[f"{name}_sequences"] = int(part["session_id"].nunique())
        result["held_out_sequences"] = self.held_out_sequences
        result["train_only_sequences"] = self.train_only_sequences
        result["valid_targets_unseen"] = self.valid_targets_unseen
        result["test_targets_unseen"] = self.test_targets_unseen
        return result


def leave_one_out_split(frame: pd.DataFrame, min_length: int = MIN_HELD_OUT_LENGTH) -> LeaveOneOut:
    """SASRec/BERT4Rec protocol: hold out each sequence's last event for test and the one before for valid.

    A sequence is a session (a user for user-sequence input); its events are ordered by time, equal times
    keeping the frame order (as session-tsv files and SessionArrays order them). Sequences shorter than
    ``min_length`` (at least 3) stay whole in train. Every part keeps the input row order.
    """
    if min_length < MIN_HELD_OUT_LENGTH:
        raise ValueError(f"min_length must be at least {MIN_HELD_OUT_LENGTH}, got {min_length}")
    n = len(frame)
    codes, uniques = pd.factorize(frame["session_id"])
    order = np.lexsort((np.arange(n), frame["timestamp"].to_numpy(dtype=np.float64), codes))
    lengths = np.bincount(codes, minlength=len(uniques))
    sorted_codes = codes[order]
    first_of_sequence = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # in sorted order
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n) - first_of_sequence[sorted_codes]
    from_end = lengths[codes] - 1 - position  # 0 = the sequence's last event
    held_out = lengths[codes] >= min_length
    train = frame[~held_out | (from_end >= 2)].reset_index(drop=True)
    train_full = frame[~held_out | (from_end >= 1)].reset_index(drop=True)
    valid = frame[held_out & (from_end >= 1)].reset_index(drop=True)
    test = frame[held_out].reset_index(drop=True)
    valid_targets = frame["item_id"][held_out & (from_end == 1)]
    test_targets = frame["item_id"][held_out & (from_end == 0)]
    train_items = pd.Index(pd.unique(train["item_id"]))
    split = LeaveOneOut(
        train=train,
        valid=valid,
        test=test,
        train_full=train_full,
        min_length=min_length,
        held_out_sequences=int((lengths >= min_length).sum()),
        train_only_sequences=int(((lengths > 0) & (lengths < min_length)).sum()),
        valid_targets_unseen=int((~valid_targets.isin(train_items)).sum()),
        test_targets_unseen=int((~test_targets.isin(train_items)).sum()),
    )
    logger.info("leave-one-out split: %s", split.counts())
    return split
