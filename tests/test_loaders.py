"""Tests of offline.durations and offline.loaders: every format, malformed input, real data files."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.durations import parse_duration
from offline.loaders import DataFormatError, load_events, movielens_100k_path

RSC15_FULL = Path("/work/shared/data/rsc15-100k/yoochoose-clicks-100k_train_full.txt")
HAS_RECBOLE = importlib.util.find_spec("recbole") is not None


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_canonical(frame: pd.DataFrame, with_user: bool = False) -> None:
    expected = ["session_id", "item_id", "timestamp", *(["user_id", "rating"] if with_user else [])]
    assert list(frame.columns) == expected
    assert frame["timestamp"].dtype == np.float64
    for column in ("session_id", "item_id", *(["user_id"] if with_user else [])):
        assert pd.api.types.is_string_dtype(frame[column].dtype)
        assert all(isinstance(value, str) for value in frame[column])
    assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0


def format_error(path: Path, fmt: str, **kwargs: object) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_events(path, fmt, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return info.value


# ------------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("1.5h", 5400.0), ("2d", 172800.0),
     ("1w", 604800.0), (" 45 m ", 2700.0), ("0.5s", 0.5), (".5m", 30.0)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("   ", "empty"), ("-5m", "negative"), ("0", "zero"), ("0h", "zero"), ("5x", "unknown unit"),
     ("1.5.h", "invalid"), ("h", "invalid"), ("1 h m", "invalid"), ("5M", "unknown unit")],
)  # fmt: skip
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ yoochoose


def test_yoochoose(tmp_path: Path) -> None:
    path = write(
        tmp_path / "clicks.dat",
        "1,2014-04-07T10:51:09.277Z,0214536502,0\n"
        "1,2014-04-07T10:54:09.868Z,214536500,0\n"
        "2,2014-04-06T23:59:59.000Z,214662742,S\n"
        "1,2014-04-07T10:54:09.868Z,214536506,0\n",
    )
    frame = load_events(path, "yoochoose")
    assert_canonical(frame)
    assert frame["session_id"].tolist() == ["1", "1", "2", "1"]  # input order kept
    assert frame["item_id"].tolist() == ["0214536502", "214536500", "214662742", "214536506"]
    assert frame["timestamp"].tolist() == [1396867869.277, 1396868049.868, 1396828799.0, 1396868049.868]


def test_yoochoose_gzip_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "clicks.txt"  # gzip detected from the magic bytes, not the name
    path.write_bytes(gzip.compress(b"7,2014-04-07T10:51:09.277Z,5,0\n\n7,2014-04-07T10:51:10Z,6,0\n"))
    frame = load_events(path, "yoochoose")
    assert frame["item_id"].tolist() == ["5", "6"]
    assert frame["timestamp"].tolist() == [1396867869.277, 1396867870.0]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:51:09.277Z,5\n", 2, "empty field Category"),
        ("1,2014-04-07T10:51:09.277Z,5,0\n\n1,2014-04-07T10:51:09.277Z,5,0,9\n", 3, "expected 4 fields"),
        ("1,2014-04-07T10:51:09.277Z,5,0,1\n1,2014-04-07T10:51:09.277Z,5,0,1\n", 1, "expected 4 fields"),
        ("1,2014-04-07T10:51:09.277Z,5\n1,2014-04-07T10:51:09.277Z,5,0\n", 1, "expected 4 fields"),
        ("1,2014-04-07T10:51:09.277Z,5,0\n2,yesterday,5,0\n", 2, "bad ISO 8601"),
        ("1,2014-04-07T10:51:09.277Z,5,0\n2,2014-13-07T10:51:09Z,5,0\n", 2, "bad ISO 8601"),
        ("1,2014-04-07T10:51:09.277Z,,0\n", 1, "empty field ItemId"),
    ],
)
def test_yoochoose_malformed(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    error = format_error(write(tmp_path / "bad.dat", text), "yoochoose")
    assert error.line == line
    assert f"line {line}:" in str(error)
    assert fragment in str(error)


def test_missing_empty_and_binary_files(tmp_path: Path) -> None:
    assert "not found" in str(format_error(tmp_path / "nope.dat", "yoochoose"))
    assert "empty" in str(format_error(write(tmp_path / "empty.dat", ""), "yoochoose"))
    assert "no events" in str(format_error(write(tmp_path / "blank.dat", "\n\n"), "yoochoose"))
    assert "directory" in str(format_error(tmp_path, "session-tsv"))
    binary = tmp_path / "latin1.dat"
    binary.write_bytes(b"1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:51:09.277Z,\xe9\xe9,0\n")
    error = format_error(binary, "yoochoose")
    assert error.line == 2 and "UTF-8" in str(error)
    truncated = tmp_path / "truncated.gz"
    packed = gzip.compress("".join(f"{i},2014-04-07T10:51:09.277Z,{i * 7919},0\n" for i in range(5000)).encode())
    truncated.write_bytes(packed[: len(packed) // 2])
    assert "cannot decompress" in str(format_error(truncated, "yoochoose"))


def test_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "s.tsv", "SessionId\tItemId\tTime\n1\t2\t3.0\n")
    with pytest.raises(ValueError, match="unknown format"):
        load_events(path, "csv")
    with pytest.raises(ValueError, match="min_rating"):
        load_events(path, "session-tsv", min_rating=3)
    with pytest.raises(ValueError, match="session_gap_s"):
        load_events(path, "movielens", session_gap_s=0)


# ------------------------------------------------------------------------------------------------ session-tsv


def test_session_tsv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.tsv",
        "SessionId\tItemId\tTime\n3\t214716935\t1396437466.94\n3\t214832672\t1396438212.318\n"
        "1\t7\t1396437466.94\n1\t6\t1396437466.94\n",
    )
    frame = load_events(path, "session-tsv")
    assert_canonical(frame)
    assert frame["session_id"].tolist() == ["3", "3", "1", "1"]
    assert frame["item_id"].tolist() == ["214716935", "214832672", "7", "6"]  # equal times keep input order
    assert frame["timestamp"].tolist() == [1396437466.94, 1396438212.318, 1396437466.94, 1396437466.94]


def test_session_tsv_column_order_extra_columns_and_header_only(tmp_path: Path) -> None:
    path = write(tmp_path / "s.tsv", "Time\tExtra\tItemId\tSessionId\r\n10.5\tx\ta\tS1\r\n11.25\ty\tb\tS1\r\n")
    frame = load_events(path, "session-tsv")
    assert frame.to_dict("list") == {"session_id": ["S1", "S1"], "item_id": ["a", "b"], "timestamp": [10.5, 11.25]}
    empty = load_events(write(tmp_path / "h.tsv", "SessionId\tItemId\tTime\n"), "session-tsv")
    assert_canonical(empty)
    assert len(empty) == 0


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1\t2\t1396437466.94\n", 1, "missing header"),
        ("SessionId,ItemId,Time\n1,2,3.0\n", 1, "missing header"),
        ("\n1\t2\t3.0\n", 1, "missing header"),
        ("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t2\tabc\n", 3, "bad Time 'abc'"),
        ("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t2\tnan\n", 3, "bad Time"),
        ("SessionId\tItemId\tTime\n1\t2\t3.0\n\n1\t2\t3.0\t4\n", 4, "expected 3 fields"),
        ("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t2\n", 3, "empty field Time"),
        ("SessionId\tItemId\tTime\n1\t\t3.0\n", 2, "empty field ItemId"),
        ("SessionId\tItemId\tTime\tItemId\n1\t2\t3.0\t4\n", 1, "duplicate"),
    ],
)
def test_session_tsv_malformed(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    error = format_error(write(tmp_path / "bad.tsv", text), "session-tsv")
    assert error.line == line
    assert fragment in str(error)


@pytest.mark.skipif(not RSC15_FULL.exists(), reason="rsc15-100k data not present")
def test_real_rsc15_file() -> None:
    started = time.perf_counter()
    frame = load_events(RSC15_FULL, "session-tsv")
    elapsed = time.perf_counter() - started
    assert len(frame) == 70278
    assert_canonical(frame)
    assert frame["session_id"].iat[0] == "3" and frame["item_id"].iat[0] == "214716935"
    assert frame["timestamp"].iat[0] == 1396437466.94
    assert elapsed < 1.0, f"loading took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------------ movielens


def test_movielens_ratings_dat(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.dat",
        "2::10::5::1000\n1::20::3::5000\n1::21::4::1000\n1::22::2::1000\n1::23::5::4601\n2::11::1::1100\n",
    )
    frame = load_events(path, "movielens", session_gap_s=3600.0)
    assert_canonical(frame, with_user=True)
    # sorted by (user, time, input order); user 1: 1000, 1000, 4601 (gap 3601 > 3600 -> new), 5000
    assert frame["item_id"].tolist() == ["21", "22", "23", "20", "10", "11"]
    assert frame["session_id"].tolist() == ["1:0", "1:0", "1:1", "1:1", "2:0", "2:0"]
    assert frame["rating"].tolist() == [4.0, 2.0, 5.0, 3.0, 5.0, 1.0]
    rated = load_events(path, "movielens", session_gap_s=3600.0, min_rating=4)
    assert rated["item_id"].tolist() == ["21", "23", "10"]
    assert rated["session_id"].tolist() == ["1:0", "1:1", "2:0"]


def test_movielens_inter_udata_and_csv(tmp_path: Path) -> None:
    inter = write(
        tmp_path / "x.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n196\t302\t4\t881250950\n",
    )
    udata = write(tmp_path / "u.data", "196\t242\t3\t881250949\n196\t302\t4\t881250950\n")
    ratings_csv = write(
        tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n196,242,3.0,881250949\n196,302,4.0,881250950\n"
    )
    for path in (inter, udata, ratings_csv):
        frame = load_events(path, "movielens")
        assert_canonical(frame, with_user=True)
        assert frame["item_id"].tolist() == ["242", "302"]
        assert frame["session_id"].tolist() == ["196:0", "196:0"]
        assert frame["timestamp"].tolist() == [881250949.0, 881250950.0]
        assert frame["rating"].tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"),
    [
        ("ratings.dat", "1::2::3::4\n1::2::3\n", 2, "missing or empty field timestamp"),
        ("ratings.dat", "1::2::3::4\n1:2::3::4\n", 2, "separated by '::'"),
        ("ratings.dat", "1::2::3::4\n1::2:3::4\n", 2, "separated by '::'"),
        ("ratings.dat", "1::2::3::4\n1::2::x::4\n", 2, "bad rating 'x'"),
        ("ratings.dat", "1::2::3::4\n1::2::3::4::5\n", 2, "expected 4 fields"),
        ("ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n1\t2\t3\tT\n", 3,
         "bad timestamp"),
        ("what.txt", "hello world\n", 1, "not a MovieLens ratings file"),
    ],
)  # fmt: skip
def test_movielens_malformed(tmp_path: Path, name: str, text: str, line: int, fragment: str) -> None:
    error = format_error(write(tmp_path / name, text), "movielens")
    assert error.line == line
    assert fragment in str(error)


@pytest.mark.skipif(not HAS_RECBOLE, reason="recbole is not installed")
def test_ml_100k_from_recbole() -> None:
    path = movielens_100k_path()
    assert path.name == "ml-100k.inter" and path.is_file()
    frame = load_events("ml-100k", "movielens", session_gap_s=3600.0)
    assert_canonical(frame, with_user=True)
    assert len(frame) == 100_000
    assert frame["user_id"].nunique() == 943
    assert frame["item_id"].nunique() == 1682
    assert (frame["session_id"].str.rsplit(":", n=1).str[0] == frame["user_id"]).all()
    # within a session consecutive events are at most one hour apart, across sessions of a user more
    same_user = frame["user_id"].to_numpy()[1:] == frame["user_id"].to_numpy()[:-1]
    gaps = np.diff(frame["timestamp"].to_numpy())
    new_session = frame["session_id"].to_numpy()[1:] != frame["session_id"].to_numpy()[:-1]
    assert (gaps[same_user] >= 0).all()
    assert (gaps[same_user & new_session] > 3600).all()
    assert (gaps[same_user & ~new_session] <= 3600).all()


def test_movielens_100k_path_without_recbole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataFormatError, match="pip install --no-deps recbole"):
        movielens_100k_path()
    with pytest.raises(DataFormatError, match="pip install --no-deps recbole"):
        load_events("ml-100k", "movielens")


# ------------------------------------------------------------------------------------------------ goodreads


GOODREADS_RECORDS = [
    {"user_id": "8842281e1d1347389f2ab93d60773d4d", "book_id": "24375664", "review_id": "r1", "rating": 5,
     "review_text": "Mind blowing", "date_added": "Fri Aug 25 13:55:02 -0700 2017",
     "date_updated": "Mon Oct 09 08:55:59 -0700 2017", "read_at": "Sat Oct 07 00:00:00 -0700 2017"},
    {"user_id": "8842281e1d1347389f2ab93d60773d4d", "book_id": "18245960", "rating": 3,
     "date_added": "Fri Aug 25 14:30:00 -0700 2017"},
    {"user_id": "u2", "book_id": 6392944, "timestamp": 1500000000.5},
    {"user_id": "u2", "book_id": "22318578", "rating": "4", "timestamp": 1500000100,
     "date_added": "Thu Dec 05 10:44:25 -0800 2013"},
]  # fmt: skip


def goodreads_text(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


@pytest.mark.parametrize("compressed", [False, True])
def test_goodreads(tmp_path: Path, compressed: bool) -> None:
    data = goodreads_text(GOODREADS_RECORDS).encode()
    path = tmp_path / ("reviews.json" if compressed else "reviews.json.gz")  # names lie on purpose
    path.write_bytes(gzip.compress(data) if compressed else data)
    frame = load_events(path, "goodreads", session_gap_s=3600.0)
    assert_canonical(frame, with_user=True)
    user = "8842281e1d1347389f2ab93d60773d4d"
    assert frame["user_id"].tolist() == [user, user, "u2", "u2"]
    assert frame["item_id"].tolist() == ["24375664", "18245960", "6392944", "22318578"]
    # Fri Aug 25 13:55:02 -0700 2017 = 20:55:02 UTC; numeric timestamp wins over date_added
    assert frame["timestamp"].tolist() == [1503694502.0, 1503696600.0, 1500000000.5, 1500000100.0]
    assert frame["session_id"].tolist() == [f"{user}:0", f"{user}:0", "u2:0", "u2:0"]
    assert np.isnan(frame["rating"].to_numpy()[2]) and frame["rating"].iat[3] == 4.0
    rated = load_events(path, "goodreads", min_rating=4)
    assert rated["item_id"].tolist() == ["24375664", "22318578"]  # unrated and 3-star events dropped


@pytest.mark.parametrize(
    ("lines", "line", "fragment"),
    [
        (['{"user_id": "u", "book_id": "1", "timestamp": 1}', '{"user_id": "u", "book_id": '], 2, "invalid JSON"),
        (['{"user_id": "u", "book_id": "1", "timestamp": 1}', "", '["list"]'], 3, "expected a JSON object"),
        (['{"user_id": "u", "timestamp": 1}'], 1, "'book_id'"),
        (['{"user_id": "u", "book_id": "1", "timestamp": 1}', '{"user_id": "u", "book_id": "2"}'], 2,
         "date_added"),
        (['{"user_id": "u", "book_id": "1", "date_added": "Fri Aug 25 13:55:02 -0700 2017"}',
          '{"user_id": "u", "book_id": "1", "date_added": "2017-08-25"}'], 2, "bad date_added"),
        (['{"user_id": "u", "book_id": "1", "timestamp": "soon"}'], 1, "bad timestamp"),
        (['{"user_id": "u", "book_id": "1", "timestamp": 1, "rating": [5]}'], 1, "bad rating"),
    ],
)  # fmt: skip
def test_goodreads_malformed(tmp_path: Path, lines: list[str], line: int, fragment: str) -> None:
    error = format_error(write(tmp_path / "g.json", "\n".join(lines) + "\n"), "goodreads")
    assert error.line == line
    assert fragment in str(error)


# ------------------------------------------------------------------------------------------------ user-sequence


def test_user_sequence(tmp_path: Path) -> None:
    # whitespace of any kind, blank lines and CRLF; users interleaved (line order is the time order)
    path = write(tmp_path / "ml-1m.txt", "1 10\n1\t11\r\n\n2  10\n1 12\n  2 13  \n")
    frame = load_events(path, "user-sequence")
    assert list(frame.columns) == ["session_id", "item_id", "timestamp", "user_id"]
    assert_canonical(frame[["session_id", "item_id", "timestamp"]])
    assert frame["session_id"].tolist() == frame["user_id"].tolist() == ["1", "1", "2", "1", "2"]
    assert frame["item_id"].tolist() == ["10", "11", "10", "12", "13"]
    assert frame["timestamp"].tolist() == [1.0, 2.0, 4.0, 5.0, 6.0]  # line numbers
    # a user is one whole sequence: no cut at inactivity gaps, however short the gap
    assert load_events(path, "user-sequence", session_gap_s=1.0)["session_id"].tolist() == ["1", "1", "2", "1", "2"]
    packed = tmp_path / "seq.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    pd.testing.assert_frame_equal(load_events(packed, "user-sequence"), frame)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"1 10\n1 \xe9\n")
    assert format_error(binary, "user-sequence").line == 2


def test_user_sequence_min_user_events(tmp_path: Path) -> None:
    path = write(tmp_path / "seq.txt", "a 1\na 2\nb 1\na 3\nb 2\nc 9\n")
    assert load_events(path, "user-sequence", min_user_events=2)["user_id"].tolist() == ["a", "a", "b", "a", "b"]
    assert load_events(path, "user-sequence", min_user_events=3)["item_id"].tolist() == ["1", "2", "3"]
    assert load_events(path, "user-sequence", min_user_events=0).shape[0] == 6
    with pytest.raises(ValueError, match="min_rating"):
        load_events(path, "user-sequence", min_rating=3)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1 10\n1 11 5\n", 2, "expected 2 fields (user item, separated by whitespace), found 3: '1 11 5'"),
        ("1 10\n\n1\n", 3, "expected 2 fields"),
        ("1,10\n", 1, "found 1"),
        ("\n \n", None, "no events"),
    ],
)
def test_user_sequence_malformed(tmp_path: Path, text: str, line: int | None, fragment: str) -> None:
    error = format_error(write(tmp_path / "bad.txt", text), "user-sequence")
    assert error.line == line
    assert fragment in str(error)


def test_min_user_events_before_sessionizing_and_whole_users(tmp_path: Path) -> None:
    # user 1: 4 ratings in 2 sessions (gap 4000 s), one rated 1; user 2: 2 ratings
    path = write(tmp_path / "ratings.dat", "1::10::5::1000\n1::11::4::1100\n1::12::1::5100\n1::13::5::5200\n"
                                           "2::20::5::1000\n2::21::5::1010\n")  # fmt: skip
    # counted per user before the cut into sessions: user 1's sessions of 2 events survive min_user_events=3
    frame = load_events(path, "movielens", min_user_events=3)
    assert frame["session_id"].tolist() == ["1:0", "1:0", "1:1", "1:1"]
    # counted after min_rating: user 1 keeps 3 events, so min_user_events=4 drops everyone
    assert load_events(path, "movielens", min_rating=4, min_user_events=3)["user_id"].unique().tolist() == ["1"]
    assert load_events(path, "movielens", min_rating=4, min_user_events=4).empty
    # an infinite gap keeps each user whole, named by the user id
    whole = load_events(path, "movielens", session_gap_s=math.inf)
    assert whole["session_id"].tolist() == ["1", "1", "1", "1", "2", "2"]
    assert whole["item_id"].tolist() == ["10", "11", "12", "13", "20", "21"]
    with pytest.raises(ValueError, match="min_user_events applies only to formats with users"):
        load_events(path, "yoochoose", min_user_events=2)
    with pytest.raises(ValueError, match="min_user_events must be"):
        load_events(path, "movielens", min_user_events=-1)


@pytest.mark.parametrize("stamp", ["1e300", "99999999999999999999999", "-1"])
def test_timestamps_outside_the_contract_range_are_malformed_lines(tmp_path: Path, stamp: str) -> None:
    path = tmp_path / "clicks.tsv"
    path.write_text(f"SessionId\tItemId\tTime\n1\t2\t100.0\n1\t3\t{stamp}\n")
    with pytest.raises(DataFormatError, match="line 3: Time .* is outside 1970-2200"):
        load_events(path, "session-tsv")
