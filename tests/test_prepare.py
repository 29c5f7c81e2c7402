"""Tests of offline.prepare: outputs, round-trip precision, atomic replacement of the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline import prepare as prepare_module
from offline.cleaning import clean, time_split
from offline.loaders import DataFormatError, load_events
from offline.prepare import prepare, write_session_tsv

DAY = 86400.0
START = 1396310400.0  # 2014-04-01T00:00:00Z
OUTPUT_FILES = {
    "train.tsv",
    "valid.tsv",
    "test.tsv",
    "train_full.tsv",
    "stats.json",
    "session_length_cdf.png",
    "events_per_day.png",
}


def synthetic_clicks(path: Path, days: int = 8, sessions_per_day: int = 40, seed: int = 0) -> Path:
    """Session-tsv file with millisecond (and some sub-millisecond) timestamps, a few rare items."""
    rng = np.random.default_rng(seed)
    lines = ["SessionId\tItemId\tTime"]
    session = 0
    for day in range(days):
        for _ in range(sessions_per_day):
            session += 1
            t = START + day * DAY + float(rng.uniform(0, DAY - 3600))
            for _ in range(int(rng.integers(1, 7))):
                item = int(rng.integers(0, 30)) if rng.random() > 0.03 else 1000 + session  # rare items
                t += float(rng.uniform(1, 120))
                stamp = repr(round(t, 3)) if rng.random() < 0.8 else repr(t)
                lines.append(f"{session}\t{item:06d}\t{stamp}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def staging_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_prepare_writes_everything(tmp_path: Path) -> None:
    source = synthetic_clicks(tmp_path / "clicks.tsv")
    out = tmp_path / "out" / "prepared"
    report = prepare(source, "session-tsv", out, test_days=1.0, valid_days=1.0)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert staging_leftovers(out.parent) == []

    stats = json.loads((out / "stats.json").read_text())
    assert stats == {key: value for key, value in report.items() if key != "out_dir"}
    assert report["out_dir"] == str(out.absolute())
    assert stats["parameters"]["format"] == "session-tsv" and stats["parameters"]["min_item_support"] == 5
    assert set(stats["files"]) == OUTPUT_FILES

    # the written splits are exactly what load -> clean -> split produces, timestamps bit-exact
    expected = time_split(clean(load_events(source, "session-tsv")))
    for name in ("train", "valid", "test", "train_full"):
        written = load_events(out / f"{name}.tsv", "session-tsv")
        want: pd.DataFrame = getattr(expected, name)
        key = ["session_id", "timestamp", "item_id"]
        pd.testing.assert_frame_equal(
            written.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
        )
        split_stats = stats["splits"][name]
        assert split_stats["n_events"] == len(want) > 0
        assert split_stats["n_sessions"] == want["session_id"].nunique()
        assert split_stats["n_items"] == want["item_id"].nunique()
    raw = load_events(source, "session-tsv")
    assert stats["raw"]["n_events"] == len(raw)
    dropped = stats["dropped"]
    assert dropped["cleaning_events"] == len(raw) - stats["cleaned"]["n_events"] > 0
    assert dropped["dropped_unseen_test"] == expected.dropped_unseen_test
    assert dropped["dropped_unseen_valid"] == expected.dropped_unseen_valid
    assert dropped["dropped_short_test"] == expected.dropped_short_test
    assert stats["boundaries"]["test_start"] == expected.test_start
    full_sessions = set(expected.train_full["session_id"])
    assert full_sessions >= set(expected.train["session_id"]) | set(expected.valid["session_id"])
    assert full_sessions.isdisjoint(expected.test["session_id"])

    # files are grouped by session, sessions by start time, events by time
    train = pd.read_csv(out / "train.tsv", sep="\t", dtype=str)
    assert list(train.columns) == ["SessionId", "ItemId", "Time"]
    times = train["Time"].astype(float).to_numpy()
    starts = train.groupby("SessionId", sort=False)["Time"].first().astype(float).to_numpy()
    assert (np.diff(starts) >= 0).all()
    same = train["SessionId"].to_numpy()[1:] == train["SessionId"].to_numpy()[:-1]
    assert (np.diff(times)[same] >= 0).all()
    assert train["ItemId"].str.len().eq(6).all()  # ids stay strings with their leading zeros


def test_write_session_tsv_round_trips_exactly(tmp_path: Path) -> None:
    times = [1396437466.9400001, 1396437466.94, 1e-7, 1396437466.123456789, 0.1 + 0.2, 7258118399.999999]
    frame = pd.DataFrame(
        {"session_id": ["s", "s", "t", "t", "u", "u"], "item_id": list("abcdef"), "timestamp": times}
    ).astype({"session_id": "str", "item_id": "str"})
    path = tmp_path / "x.tsv"
    write_session_tsv(frame, path)
    back = load_events(path, "session-tsv")
    assert sorted(back["timestamp"].tolist()) == sorted(times)
    assert dict(zip(back["item_id"], back["timestamp"], strict=True)) == dict(zip(list("abcdef"), times, strict=True))
    with pytest.raises(ValueError, match="tabs"):
        write_session_tsv(frame.assign(item_id=["a\tb", "b", "c", "d", "e", "f"]), tmp_path / "y.tsv")


def test_prepare_bad_input_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t2\toops\n", encoding="utf-8")
    parent = tmp_path / "outputs"
    parent.mkdir()
    with pytest.raises(DataFormatError, match="line 3"):
        prepare(bad, "session-tsv", parent / "prepared")
    assert list(parent.iterdir()) == []


def test_prepare_failure_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = synthetic_clicks(tmp_path / "clicks.tsv")
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "marker.txt").write_text("old", encoding="utf-8")

    bad = tmp_path / "bad.tsv"
    bad.write_text("no header here\n", encoding="utf-8")
    with pytest.raises(DataFormatError):
        prepare(bad, "session-tsv", out)
    assert [p.name for p in out.iterdir()] == ["marker.txt"]

    def broken_plots(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
        (Path(out_dir) / "half-written.png").write_bytes(b"junk")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_plots", broken_plots)
        with pytest.raises(RuntimeError, match="disk full"):
            prepare(source, "session-tsv", out)
    assert [p.name for p in out.iterdir()] == ["marker.txt"]
    assert (out / "marker.txt").read_text(encoding="utf-8") == "old"
    assert staging_leftovers(tmp_path) == []

    real_rename = prepare_module.os.rename

    def rename_fails_into_place(src: Path, dst: Path) -> None:
        if Path(dst) == out.absolute() and Path(src).name.startswith(".prepared.tmp-"):
            raise OSError("rename failed")
        real_rename(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module.os, "rename", rename_fails_into_place)
        with pytest.raises(OSError, match="rename failed"):
            prepare(source, "session-tsv", out)
    assert [p.name for p in out.iterdir()] == ["marker.txt"]
    assert staging_leftovers(tmp_path) == []

    prepare(source, "session-tsv", out)  # success replaces the old directory entirely
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert staging_leftovers(tmp_path) == []


def test_prepare_rejects_empty_splits(tmp_path: Path) -> None:
    source = synthetic_clicks(tmp_path / "clicks.tsv", days=1)  # everything ends within the last day
    with pytest.raises(ValueError, match="empty train set") as info:
        prepare(source, "session-tsv", tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no events left after cleaning"):
        prepare(source, "session-tsv", tmp_path / "out", min_item_support=10**6)
    assert not (tmp_path / "out").exists()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="not a directory"):
        prepare(synthetic_clicks(tmp_path / "more.tsv"), "session-tsv", not_a_dir)


def test_prepare_movielens_style_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = []
    for user in range(1, 40):
        t = 978300000 + int(rng.integers(0, 20 * 86400))
        for _ in range(int(rng.integers(4, 30))):
            t += int(rng.choice([30, 60, 600, 5000, 90000]))
            lines.append(f"{user}::{int(rng.integers(1, 25))}::{int(rng.integers(1, 6))}::{t}")
    source = tmp_path / "ratings.dat"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = prepare(source, "movielens", tmp_path / "ml", session_gap_s=3600.0, min_rating=3, test_days=3)
    assert report["parameters"]["min_rating"] == 3.0 and report["parameters"]["session_gap_s"] == 3600.0
    assert report["raw"]["n_users"] <= 39
    train = load_events(tmp_path / "ml" / "train.tsv", "session-tsv")
    assert train["session_id"].str.contains(":").all()


# ------------------------------------------------------------------------------------------------ leave-one-out

SEQUENCES = "u1 a\nu1 b\nu1 c\nu1 d\nu2 e\nu2 a\nu3 b\nu3 c\nu3 a\n"  # u2 is too short to hold anything out


def tsv_rows(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "SessionId\tItemId\tTime"
    return lines[1:]


def test_leave_one_out_split_by_hand(tmp_path: Path) -> None:
    source = tmp_path / "seq.txt"
    source.write_text(SEQUENCES, encoding="utf-8")
    out = tmp_path / "loo"
    report = prepare(source, "user-sequence", out, split="leave-one-out", min_session_length=0, min_item_support=0)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert tsv_rows(out / "train.tsv") == ["u1\ta\t1.0", "u1\tb\t2.0", "u2\te\t5.0", "u2\ta\t6.0", "u3\tb\t7.0"]
    assert tsv_rows(out / "valid.tsv") == ["u1\ta\t1.0", "u1\tb\t2.0", "u1\tc\t3.0", "u3\tb\t7.0", "u3\tc\t8.0"]
    assert tsv_rows(out / "test.tsv") == [
        "u1\ta\t1.0", "u1\tb\t2.0", "u1\tc\t3.0", "u1\td\t4.0", "u3\tb\t7.0", "u3\tc\t8.0", "u3\ta\t9.0"
    ]  # fmt: skip
    assert tsv_rows(out / "train_full.tsv") == [
        "u1\ta\t1.0", "u1\tb\t2.0", "u1\tc\t3.0", "u2\te\t5.0", "u2\ta\t6.0", "u3\tb\t7.0", "u3\tc\t8.0"
    ]  # fmt: skip
    assert report["leave_one_out"] == {
        "min_sequence_length": 3,
        "held_out_sequences": 2,
        "train_only_sequences": 1,
        "valid_targets_unseen_in_train": 2,  # c (u1 and u3) is never in train
        "test_targets_unseen_in_train": 1,  # d
    }
    parameters = report["parameters"]
    assert parameters["split"] == "leave-one-out" and parameters["session_gap_s"] is None
    assert "test_days" not in parameters and "boundaries" not in report
    assert report["splits"]["test"]["n_sessions"] == 2 and report["cleaned"]["n_events"] == 9
    assert json.loads((out / "stats.json").read_text()) == {k: v for k, v in report.items() if k != "out_dir"}


def test_leave_one_out_orders_by_time_then_file_order(tmp_path: Path) -> None:
    from offline.cleaning import leave_one_out_split

    frame = pd.DataFrame({
        "session_id": ["s", "t", "s", "s", "t", "s", "t"],
        "item_id": ["late", "t1", "tie1", "first", "t2", "tie2", "t3"],
        "timestamp": [9.0, 1.0, 5.0, 1.0, 2.0, 5.0, 3.0],
    })  # fmt: skip
    split = leave_one_out_split(frame)
    assert split.train["item_id"].tolist() == ["t1", "tie1", "first"]  # input order kept; tie1 before tie2
    assert split.valid["item_id"].tolist() == ["t1", "tie1", "first", "t2", "tie2"]
    assert split.test["item_id"].tolist() == frame["item_id"].tolist()
    assert split.counts()["test_sequences"] == 2
    with pytest.raises(ValueError, match="at least 3"):
        leave_one_out_split(frame, min_length=2)


def test_prepare_leave_one_out_thresholds_and_errors(tmp_path: Path) -> None:
    source = tmp_path / "seq.txt"
    source.write_text(SEQUENCES, encoding="utf-8")
    # the default cleaning (items with >= 5 events) leaves nothing of this tiny file
    with pytest.raises(ValueError, match="no events left after cleaning"):
        prepare(source, "user-sequence", tmp_path / "out", split="leave-one-out")
    # min_user_events drops the short user before anything else, as --min-session-length would
    report = prepare(source, "user-sequence", tmp_path / "out", split="leave-one-out", min_user_events=3,
                     min_session_length=0, min_item_support=0)  # fmt: skip
    assert report["raw"]["n_users"] == 2 and report["leave_one_out"]["train_only_sequences"] == 0
    short = tmp_path / "short.txt"
    short.write_text("u1 a\nu1 b\nu2 a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds out nothing"):
        prepare(short, "user-sequence", tmp_path / "out2", split="leave-one-out", min_item_support=0)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="unknown split"):
        prepare(source, "user-sequence", tmp_path / "out3", split="random")


def test_prepare_leave_one_out_of_sessions(tmp_path: Path) -> None:
    source = synthetic_clicks(tmp_path / "clicks.tsv")
    out = tmp_path / "loo"
    report = prepare(source, "session-tsv", out, split="leave-one-out")
    cleaned = clean(load_events(source, "session-tsv"))
    lengths = cleaned.groupby("session_id").size()
    test = load_events(out / "test.tsv", "session-tsv")
    valid = load_events(out / "valid.tsv", "session-tsv")
    train = load_events(out / "train.tsv", "session-tsv")
    assert set(test["session_id"]) == set(lengths[lengths >= 3].index) == set(valid["session_id"])
    assert len(test) == lengths[lengths >= 3].sum() and len(valid) == len(test) - test["session_id"].nunique()
    assert len(train) == len(cleaned) - 2 * test["session_id"].nunique()
    assert report["leave_one_out"]["train_only_sequences"] == int((lengths < 3).sum())
    # each test sequence is its valid sequence plus one last event, each valid its train part plus one
    for sid, events in test.groupby("session_id"):
        assert events["item_id"].tolist()[:-1] == valid[valid["session_id"] == sid]["item_id"].tolist()
        assert events["item_id"].tolist()[:-2] == train[train["session_id"] == sid]["item_id"].tolist()


def test_prepare_goodreads_users_with_ten_reviews(tmp_path: Path) -> None:
    # the SASRec notebook's GoodReads: users with >= 10 reviews, each user one sequence, leave-one-out
    records = []
    for user, n_reviews in (("u1", 12), ("u2", 9), ("u3", 10)):
        for k in range(n_reviews):  # days apart: a 1h session gap would cut every review into its own session
            records.append({"user_id": user, "book_id": str(k % 6), "rating": 4, "timestamp": START + k * DAY})
    source = tmp_path / "goodreads_reviews.json"
    source.write_text("".join(json.dumps(record) + "\n" for record in records[::-1]), encoding="utf-8")
    report = prepare(source, "goodreads", tmp_path / "gr", session_gap_s=float("inf"), min_user_events=10,
                     min_session_length=0, min_item_support=0, split="leave-one-out")  # fmt: skip
    assert report["parameters"]["min_user_events"] == 10 and report["parameters"]["session_gap_s"] is None
    test = load_events(tmp_path / "gr" / "test.tsv", "session-tsv")
    assert test.groupby("session_id").size().to_dict() == {"u1": 12, "u3": 10}
    assert test.groupby("session_id")["item_id"].last().to_dict() == {"u1": "5", "u3": "3"}  # the newest review
    assert report["leave_one_out"]["held_out_sequences"] == 2
