"""Tests of offline.sessionize, offline.cleaning (recursive filter, time split) and offline.stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.cleaning import clean, drop_short_sessions, restrict_to_items, time_split
from offline.sessionize import sessionize
from offline.stats import session_stats, write_plots

DAY = 86400.0


def events(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["session_id", "item_id", "timestamp"])
    frame["session_id"] = frame["session_id"].astype("str")
    frame["item_id"] = frame["item_id"].astype("str")
    frame["timestamp"] = frame["timestamp"].astype(np.float64)
    return frame


def rows(frame: pd.DataFrame) -> list[tuple[str, str, float]]:
    return list(zip(frame["session_id"], frame["item_id"], frame["timestamp"], strict=True))


# ------------------------------------------------------------------------------------------------ sessionize


def test_sessionize_gap_edges_and_order() -> None:
    gap = 100.0
    log = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u1", "u1", "u1", "u2", "u10"],
            "item_id": ["a", "x", "b", "c", "d", "e", "y", "z"],
            "timestamp": [1000.0, 5.0, 1100.0, 1201.0, 1201.0, 1000.0, 106.0, 0.0],
            "rating": [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0],
        }
    )
    out = sessionize(log, gap)
    assert list(out.columns) == ["session_id", "user_id", "item_id", "timestamp", "rating"]
    # sorted by (user, time, input order): u1 at 1000 keeps a before e; 1000->1100 is exactly the gap (same
    # session), 1100->1201 is gap+1 (new session); equal times 1201 keep c before d. u2: 5 -> 106 = gap+1.
    assert out["user_id"].tolist() == ["u1", "u1", "u1", "u1", "u1", "u10", "u2", "u2"]
    assert out["item_id"].tolist() == ["a", "e", "b", "c", "d", "z", "x", "y"]
    assert out["session_id"].tolist() == ["u1:0", "u1:0", "u1:0", "u1:1", "u1:1", "u10:0", "u2:0", "u2:1"]
    assert out["rating"].tolist() == [1.0, 1.0, 3.0, 4.0, 5.0, 3.0, 2.0, 2.0]
    assert isinstance(out.index, pd.RangeIndex)
    assert all(isinstance(s, str) for s in out["session_id"])


def test_sessionize_many_sessions_per_user_and_errors() -> None:
    log = pd.DataFrame({"user_id": ["7"] * 12, "item_id": list("abcdefghijkl"), "timestamp": np.arange(12) * 10.0})
    assert sessionize(log, 9.0)["session_id"].tolist() == [f"7:{n}" for n in range(12)]
    assert sessionize(log, 10.0)["session_id"].tolist() == ["7:0"] * 12
    with pytest.raises(ValueError, match="user_id"):
        sessionize(log.drop(columns="user_id"), 10.0)
    with pytest.raises(ValueError, match="positive"):
        sessionize(log, 0.0)
    assert len(sessionize(log.iloc[:0], 10.0)) == 0


# ------------------------------------------------------------------------------------------------ clean


def test_clean_needs_several_rounds() -> None:
    # X is rare -> S1 becomes [A] and is too short -> A becomes rare -> S2 becomes [B] -> B rare -> S3 = [C].
    frame = events(
        [
            ("S1", "X", 1.0),
            ("S1", "A", 2.0),
            ("S5", "C", 3.0),
            ("S2", "A", 4.0),
            ("S2", "B", 5.0),
            ("S5", "D", 6.0),
            ("S3", "B", 7.0),
            ("S3", "C", 8.0),
            ("S6", "C", 9.0),
            ("S6", "D", 10.0),
        ]
    )
    # one pass of each rule is not enough: it would only remove X and S1
    lengths = frame.groupby("session_id")["item_id"].transform("size")
    support = frame.groupby("item_id")["item_id"].transform("size")
    one_pass = frame[(lengths >= 2) & (support >= 2)]
    assert len(one_pass) == 9

    cleaned = clean(frame, min_session_length=2, min_item_support=2)
    assert rows(cleaned) == [("S5", "C", 3.0), ("S5", "D", 6.0), ("S6", "C", 9.0), ("S6", "D", 10.0)]
    assert isinstance(cleaned.index, pd.RangeIndex)
    assert rows(clean(cleaned, 2, 2)) == rows(cleaned)  # stable: a fixed point
    assert clean(frame, 2, 3).empty  # C has 3 clicks before cleaning, but only 2 survive


def test_clean_defaults_and_validation() -> None:
    sessions = [(f"s{i}", item, float(i * 10 + k)) for i in range(5) for k, item in enumerate(["a", "b"])]
    frame = events([*sessions, ("lonely", "a", 100.0), ("s9", "rare", 200.0), ("s9", "a", 201.0)])
    cleaned = clean(frame)  # min_session_length=2, min_item_support=5
    assert rows(cleaned) == sessions
    assert rows(clean(frame, min_session_length=0, min_item_support=0)) == rows(frame)  # 0 disables both rules
    lonely, s9 = ("lonely", "a", 100.0), [("s9", "rare", 200.0), ("s9", "a", 201.0)]
    assert rows(clean(frame, min_session_length=0)) == [*sessions, lonely, s9[1]]  # only items filtered
    assert rows(clean(frame, min_item_support=0)) == [*sessions, *s9]  # only sessions filtered
    with pytest.raises(ValueError):
        clean(frame, min_session_length=-1)


def test_restrict_to_items_and_drop_short_sessions() -> None:
    frame = events([("1", "a", 1.0), ("1", "b", 2.0), ("2", "c", 3.0), ("2", "a", 3.0), ("3", "c", 4.0)])
    kept, dropped = restrict_to_items(frame, {"a", "b"})
    assert rows(kept) == [("1", "a", 1.0), ("1", "b", 2.0), ("2", "a", 3.0)] and dropped == 2
    kept, dropped = restrict_to_items(frame, pd.Series(["c"]))
    assert kept["item_id"].tolist() == ["c", "c"] and dropped == 3
    kept, dropped = drop_short_sessions(frame, 2)
    assert kept["session_id"].tolist() == ["1", "1", "2", "2"] and dropped == 1


# ------------------------------------------------------------------------------------------------ time split


def split_fixture() -> pd.DataFrame:
    newest = 10 * DAY
    test_start = newest - DAY
    rest_newest = test_start - 1.0  # newest event outside the test sessions
    valid_start = rest_newest - DAY
    return events(
        [
            ("train_a", "a", 1 * DAY),
            ("train_a", "b", 1 * DAY + 5),
            ("train_b", "c", valid_start - 10),
            ("train_b", "a", valid_start - 1),  # ends 1 s before the valid boundary -> train
            ("valid_a", "a", valid_start - 50),
            ("valid_a", "b", valid_start),  # ends exactly on the valid boundary -> valid
            ("valid_b", "b", rest_newest - 20),
            ("valid_b", "new_v", rest_newest - 10),  # unseen in train: dropped, the session keeps [b, b]
            ("valid_b", "b", rest_newest),
            ("test_a", "a", test_start - 100),  # starts before the test boundary (not part of rest_newest)
            ("test_a", "c", test_start),  # ends exactly on the test boundary -> test
            ("test_b", "b", newest - 5),
            ("test_b", "new_t", newest - 4),  # unseen
            ("test_b", "new_v", newest - 3),  # seen only in valid: still unseen for train
            ("test_c", "c", newest - 2),
            ("test_c", "new_t", newest - 1),  # unseen -> test_c becomes length 1 and is dropped
            ("test_d", "a", newest),
            ("test_d", "a", newest),
        ]
    )


def test_time_split_boundaries_and_unseen_items() -> None:
    frame = split_fixture()
    split = time_split(frame, test_days=1.0, valid_days=1.0)
    assert split.test_start == 9 * DAY
    assert split.valid_start == 9 * DAY - 1.0 - DAY
    assert split.train["session_id"].unique().tolist() == ["train_a", "train_b"]
    assert split.valid["session_id"].unique().tolist() == ["valid_a", "valid_b"]
    assert split.test["session_id"].unique().tolist() == ["test_a", "test_d"]
    assert split.valid[split.valid["session_id"] == "valid_b"]["item_id"].tolist() == ["b", "b"]
    assert split.test["item_id"].tolist() == ["a", "c", "a", "a"]
    assert split.dropped_unseen_valid == 1
    assert split.dropped_unseen_test == 3
    assert split.dropped_short_valid == 0
    assert split.dropped_short_test == 2  # test_b ([b]) and test_c ([c])
    assert set(split.test["item_id"]) <= set(split.train["item_id"])
    assert set(split.valid["item_id"]) <= set(split.train["item_id"])
    # train_full: every non-test session, unfiltered, in input order
    assert rows(split.train_full) == rows(frame[~frame["session_id"].str.startswith("test")])
    counts = split.counts()
    assert counts["train_events"] == 4 and counts["valid_events"] == 4 and counts["test_events"] == 4
    assert counts["train_full_events"] == 9 and counts["test_sessions"] == 2 and counts["valid_sessions"] == 2
    assert counts["dropped_unseen_test"] == 3 and counts["dropped_short_test"] == 2


def test_time_split_no_validation_and_ties_keep_order() -> None:
    frame = events([("s1", "b", 0.0), ("s1", "a", 0.0), ("s1", "c", 0.0), ("s2", "a", 5 * DAY), ("s2", "c", 5 * DAY)])
    split = time_split(frame, test_days=1.0, valid_days=0.0)
    assert split.valid.empty and split.valid_start is None
    assert split.train["item_id"].tolist() == ["b", "a", "c"]  # equal timestamps keep input order
    assert split.test["item_id"].tolist() == ["a", "c"]
    with pytest.raises(ValueError):
        time_split(frame, test_days=0.0)
    with pytest.raises(ValueError):
        time_split(frame, valid_days=-1.0)


def test_time_split_uses_session_end_not_start() -> None:
    # one long session spanning the test boundary goes to test as a whole
    frame = events([("long", "a", 0.0), ("long", "b", 3 * DAY), ("old", "a", 1.0), ("old", "b", 2.0)])
    split = time_split(frame, test_days=1.0, valid_days=0.0)
    assert split.test["session_id"].tolist() == ["long", "long"]
    assert split.train["session_id"].tolist() == ["old", "old"]


# ------------------------------------------------------------------------------------------------ stats


def test_session_stats_and_plots(tmp_path: Path) -> None:
    frame = events(
        [("1", "a", 0.0), ("1", "b", 10.0), ("2", "a", DAY + 1), ("2", "b", DAY + 2), ("2", "c", 3 * DAY + 3)]
    )
    stats = session_stats(frame)
    json.dumps(stats, allow_nan=False)
    assert stats["n_events"] == 5 and stats["n_sessions"] == 2 and stats["n_items"] == 3
    assert stats["session_length_median"] == 2.5 and stats["session_length_mean"] == 2.5
    assert stats["session_length_max"] == 3 and stats["session_length_min"] == 2
    assert stats["time_start"] == 0.0 and stats["time_end"] == 3 * DAY + 3
    assert stats["time_start_iso"] == "1970-01-01T00:00:00+00:00"
    assert stats["n_days"] == 4 and stats["events_per_day_mean"] == pytest.approx(5 / 4)  # empty day counts
    assert all(type(value) in (int, float, str) for value in stats.values())
    empty = session_stats(frame.iloc[:0])
    json.dumps(empty, allow_nan=False)
    assert empty["n_events"] == 0 and empty["session_length_median"] is None
    paths = write_plots(frame, tmp_path / "plots")
    assert [p.name for p in paths] == ["session_length_cdf.png", "events_per_day.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
