"""Loaders turning real click/rating logs into the canonical event frame (session_id, item_id, timestamp)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal, cast

import numpy as np
import pandas as pd

from modelkit.package_files import installed, package_file
from offline.sessionize import sessionize
from schemas.events import MAX_TIMESTAMP

logger = logging.getLogger(__name__)

FORMATS = ("yoochoose", "session-tsv", "movielens", "goodreads", "user-sequence")
USER_FORMATS = ("movielens", "goodreads", "user-sequence")  # formats whose events carry a user_id
EVENT_COLUMNS = ("session_id", "item_id", "timestamp")
SESSION_TSV_HEADER = ("SessionId", "ItemId", "Time")
ML_100K = "ml-100k"  # special ``path`` for load_events(..., "movielens"): RecBole's bundled ml-100k.inter

_GZIP_MAGIC = b"\x1f\x8b"
_GOODREADS_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # "Thu Dec 05 10:44:25 -0800 2013"
_PARSER_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SHOWN_CHARS = 60

Compression = Literal["gzip"] | None


class DataFormatError(ValueError):
    """Input file that cannot be read as the requested format; the message is one line naming the file."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = " ".join(problem.split())
        where = f"{self.path}: line {line}" if line is not None else self.path
        super().__init__(f"{where}: {self.problem}")


def movielens_100k_path() -> Path:
    """Path of ``ml-100k.inter`` bundled with the installed recbole package (recbole is not imported)."""
    hint = "install it with 'pip install --no-deps recbole' or pass the path of a MovieLens ratings file"
    if not installed("recbole"):
        raise DataFormatError(ML_100K, f"the recbole package is not installed; {hint}")
    candidate = package_file("recbole", "dataset_example", "ml-100k", "ml-100k.inter")
    if candidate is not None:
        return candidate
    raise DataFormatError(ML_100K, f"recbole has no dataset_example/ml-100k/ml-100k.inter; {hint}")


def load_events(
    path: str | Path,
    fmt: str,
    *,
    session_gap_s: float = 3600.0,
    min_rating: float | None = None,
    min_user_events: int = 0,
) -> pd.DataFrame:
    """Read ``path`` in format ``fmt`` (one of FORMATS) into the canonical event frame.

    Columns: ``session_id`` (str), ``item_id`` (str), ``timestamp`` (float64 epoch seconds, UTC), plus
    ``user_id`` (str) for the USER_FORMATS and ``rating`` (float64) for movielens and goodreads. Rows keep
    their input order (yoochoose, session-tsv, user-sequence). movielens and goodreads are filtered by
    ``min_rating`` (events without a rating are dropped when it is set), then by ``min_user_events`` (users
    with fewer events left are dropped; 0 keeps everyone), then cut into sessions at inactivity gaps longer
    than ``session_gap_s`` (``math.inf``: one session per user, named by the user id) and come out sorted by
    (user, time, input order). user-sequence (``user item`` lines, each user's lines in time order) has no
    times: an event's timestamp is its line number, and each user is one session (``session_gap_s`` does
    not apply); ``min_user_events`` is then the minimum sequence length. The path "ml-100k" with fmt
    "movielens" means the copy bundled with recbole. Raises DataFormatError for unreadable or malformed
    input.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    gap_text = str(session_gap_s)
    gap = math.inf if gap_text == "inf" else float(gap_text) if _is_number(gap_text) else 0.0
    if gap <= 0:
        raise ValueError(f"session_gap_s must be a positive number of seconds, got {session_gap_s!r}")
    if min_rating is not None and fmt not in ("movielens", "goodreads"):
        raise ValueError(f"min_rating applies only to formats with ratings (movielens, goodreads), not {fmt}")
    if isinstance(min_user_events, bool) or not isinstance(min_user_events, int) or min_user_events < 0:
        raise ValueError(f"min_user_events must be a whole number >= 0, got {min_user_events!r}")
    if min_user_events and fmt not in USER_FORMATS:
        raise ValueError(f"min_user_events applies only to formats with users ({', '.join(USER_FORMATS)}), not {fmt}")
    if fmt == "movielens" and str(path) == ML_100K:
        path = movielens_100k_path()
    path = Path(path)
    compression = _check_file(path)
    if fmt == "yoochoose":
        frame = _load_yoochoose(path, compression)
    elif fmt == "session-tsv":
        frame = _load_session_tsv(path, compression)
    elif fmt == "user-sequence":
        frame = _drop_small_users(path, _load_user_sequence(path, compression), min_user_events)
    else:
        loader = _load_movielens if fmt == "movielens" else _load_goodreads
        frame = loader(path, compression)
        if min_rating is not None:
            before = len(frame)
            frame = frame[frame["rating"].to_numpy() >= min_rating].reset_index(drop=True)
            dropped = before - len(frame)
            logger.info("%s: dropped %d of %d events rated below %s", path, dropped, before, min_rating)
        frame = _drop_small_users(path, frame, min_user_events)
        frame = _whole_users(frame) if math.isinf(gap) else sessionize(frame, gap)
    logger.info(
        "%s: loaded %d events, %d sessions, %d items (%s)",
        path,
        len(frame),
        frame["session_id"].nunique(),
        frame["item_id"].nunique(),
        fmt,
    )
    return frame


# --------------------------------------------------------------------------------------------------- formats


def _load_yoochoose(path: Path, compression: Compression) -> pd.DataFrame:
    fields, lines = _read_fields(
        path, compression, sep=",", n_fields=4, skip_lines=0, layout="SessionId,Timestamp,ItemId,Category"
    )
    if not len(fields):
        raise DataFormatError(path, "no events (the file holds only blank lines)")
    _require_nonempty(path, fields, lines, ["SessionId", "Timestamp", "ItemId", "Category"], [0, 1, 2, 3])
    timestamps = _iso_to_epoch(fields[1])
    _fail_first(path, np.isnan(timestamps), lines, lambda i: f"bad ISO 8601 time {_show(fields[1].iat[i])}")
    return _canonical(fields[0], fields[2], timestamps)


def _load_session_tsv(path: Path, compression: Compression) -> pd.DataFrame:
    header = _split_header(path, compression, "\t")
    missing = [name for name in SESSION_TSV_HEADER if name not in header]
    if missing:
        raise DataFormatError(
            path,
            f"missing header: expected {chr(9).join(SESSION_TSV_HEADER)!r} as the first line, "
            f"found {_show(chr(9).join(header))}",
            line=1,
        )
    _check_unique(path, header)
    positions = [header.index(name) for name in SESSION_TSV_HEADER]
    fields, lines = _read_fields(
        path, compression, sep="\t", n_fields=len(header), skip_lines=1, layout=repr("\t".join(header))
    )
    _require_nonempty(path, fields, lines, list(SESSION_TSV_HEADER), positions)
    times = _timestamps(path, fields[positions[2]], lines, "Time")
    return _canonical(fields[positions[0]], fields[positions[1]], times)


def _load_movielens(path: Path, compression: Compression) -> pd.DataFrame:
    """ratings.dat (UserID::MovieID::Rating::Timestamp), u.data, RecBole .inter or ratings.csv."""
    first = _first_line(path, compression)
    if "::" in first:
        fields, lines = _read_fields(
            path,
            compression,
            sep=":",
            n_fields=7,
            skip_lines=0,
            layout="UserID::MovieID::Rating::Timestamp",
            split_line=lambda text: text.split("::"),
            expected_parts=4,
        )
        separators = (fields[1] != "") | (fields[3] != "") | (fields[5] != "")
        _fail_first(path, separators.to_numpy(), lines, lambda i: "fields must be separated by '::'")
        columns = {"user_id": 0, "item_id": 2, "rating": 4, "timestamp": 6}
    else:
        sep = "\t" if "\t" in first else ","
        names = [field.strip().split(":", 1)[0].strip().lower() for field in first.split(sep)]
        aliases = {"userid": "user_id", "movieid": "item_id", "itemid": "item_id", "movie_id": "item_id"}
        names = [aliases.get(name, name) for name in names]
        if {"user_id", "item_id", "timestamp"} <= set(names):  # RecBole atomic file or ratings.csv
            _check_unique(path, names)
            fields, lines = _read_fields(
                path, compression, sep=sep, n_fields=len(names), skip_lines=1, layout=_show(first)
            )
            wanted = ("user_id", "item_id", "rating", "timestamp")
            columns = {name: names.index(name) for name in wanted if name in names}
        elif sep == "\t" and len(names) == 4 and all(_is_number(part) for part in first.split("\t")):
            fields, lines = _read_fields(
                path, compression, sep="\t", n_fields=4, skip_lines=0, layout="user, item, rating, time"
            )
            columns = {"user_id": 0, "item_id": 1, "rating": 2, "timestamp": 3}
        else:
            raise DataFormatError(
                path,
                "not a MovieLens ratings file: expected ratings.dat (UserID::MovieID::Rating::Timestamp), "
                f"u.data, a RecBole .inter file or ratings.csv; first line is {_show(first)}",
                line=1,
            )
    if not len(fields):
        raise DataFormatError(path, "no events (the file holds only blank lines or a header)")
    _require_nonempty(path, fields, lines, list(columns), list(columns.values()))
    timestamps = _timestamps(path, fields[columns["timestamp"]], lines, "timestamp")
    if "rating" in columns:
        ratings = _numbers(path, fields[columns["rating"]], lines, "rating")
    else:
        ratings = np.full(len(timestamps), np.nan)
    users = fields[columns["user_id"]]
    return _canonical(users, fields[columns["item_id"]], timestamps, users, ratings)


def _load_goodreads(path: Path, compression: Compression) -> pd.DataFrame:
    """GoodReads JSON lines: user_id, book_id, numeric ``timestamp`` or ``date_added``, optional rating."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    ratings: list[float] = []
    line_numbers: list[int] = []
    date_rows: list[int] = []  # rows whose time comes from date_added
    dates: list[str] = []
    for number, text in _numbered_lines(path, compression):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            problem = f"invalid JSON ({error.msg} at column {error.colno})"
            raise DataFormatError(path, problem, number) from None
        if not isinstance(record, dict):
            raise DataFormatError(path, f"expected a JSON object, found {type(record).__name__}", number)
        users.append(_json_id(path, record, "user_id", number))
        items.append(_json_id(path, record, "book_id", number))
        stamp = record.get("timestamp")
        if stamp is not None:
            times.append(_json_number(path, stamp, "timestamp", number))
        else:
            date = record.get("date_added")
            if not isinstance(date, str) or not date.strip():
                raise DataFormatError(path, "no numeric 'timestamp' and no 'date_added' string", number)
            times.append(math.nan)
            date_rows.append(len(line_numbers))
            dates.append(date)
        rating = record.get("rating")
        ratings.append(math.nan if rating is None else _json_number(path, rating, "rating", number))
        line_numbers.append(number)
    if not line_numbers:
        raise DataFormatError(path, "no events (the file holds only blank lines)")
    timestamps = np.asarray(times, dtype=np.float64)
    lines = np.asarray(line_numbers, dtype=np.int64)
    if dates:
        date_series = pd.Series(dates, dtype="str")
        parsed = _datetimes_to_epoch(
            pd.to_datetime(date_series, format=_GOODREADS_DATE_FORMAT, utc=True, errors="coerce")
        )
        _fail_first(
            path,
            np.isnan(parsed),
            lines[date_rows],
            lambda i: f"bad date_added {_show(dates[i])}; expected like 'Thu Dec 05 10:44:25 -0800 2013'",
        )
        timestamps[date_rows] = parsed
    return _canonical(
        pd.Series(users, dtype="str"),
        pd.Series(items, dtype="str"),
        timestamps,
        pd.Series(users, dtype="str"),
        np.asarray(ratings, dtype=np.float64),
    )


def _load_user_sequence(path: Path, compression: Compression) -> pd.DataFrame:
    """``user item`` lines separated by whitespace, no header; the line number stands in for the time."""
    users: list[str] = []
    items: list[str] = []
    line_numbers: list[int] = []
    for number, text in _numbered_lines(path, compression):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            problem = f"expected 2 fields (user item, separated by whitespace), found {len(fields)}: {_show(text)}"
            raise DataFormatError(path, problem, number)
        users.append(fields[0])
        items.append(fields[1])
        line_numbers.append(number)
    if not line_numbers:
        raise DataFormatError(path, "no events (the file holds only blank lines)")
    user_series = pd.Series(users, dtype="str")
    return _canonical(
        user_series, pd.Series(items, dtype="str"), np.asarray(line_numbers, dtype=np.float64), user_series
    )


# --------------------------------------------------------------------------------------------------- helpers


def _drop_small_users(path: Path, frame: pd.DataFrame, min_events: int) -> pd.DataFrame:
    """Rows of users with at least ``min_events`` events (order kept); 0 keeps every row."""
    if min_events <= 0:
        return frame
    sizes = frame.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    keep = sizes >= min_events
    logger.info(
        "%s: dropped %d of %d users with fewer than %d events (%d events)",
        path,
        frame.loc[~keep, "user_id"].nunique(),
        frame["user_id"].nunique(),
        min_events,
        int((~keep).sum()),
    )
    return frame[keep].reset_index(drop=True)


def _whole_users(frame: pd.DataFrame) -> pd.DataFrame:
    """Each user's events as one session named by the user id, sorted by (user, time, input order)."""
    n = len(frame)
    user_codes, _ = pd.factorize(frame["user_id"].astype("str"), sort=True)
    order = np.lexsort((np.arange(n), frame["timestamp"].to_numpy(dtype=np.float64), user_codes))
    result = frame.iloc[order].reset_index(drop=True)
    result["session_id"] = result["user_id"].astype("str")
    return result[["session_id", *[c for c in result.columns if c != "session_id"]]]


def _canonical(
    session_ids: pd.Series,
    item_ids: pd.Series,
    timestamps: np.ndarray,
    user_ids: pd.Series | None = None,
    ratings: np.ndarray | None = None,
) -> pd.DataFrame:
    columns: dict[str, object] = {
        "session_id": session_ids.to_numpy(dtype=object),
        "item_id": item_ids.to_numpy(dtype=object),
        "timestamp": np.asarray(timestamps, dtype=np.float64),
    }
    if user_ids is not None:
        columns["user_id"] = user_ids.to_numpy(dtype=object)
    if ratings is not None:
        columns["rating"] = np.asarray(ratings, dtype=np.float64)
    frame = pd.DataFrame(columns)
    for name in ("session_id", "item_id", "user_id"):
        if name in frame.columns:
            frame[name] = frame[name].astype("str")
    return frame


def _check_file(path: Path) -> Compression:
    """Compression of an existing, non-empty file ("gzip" or None, from its magic bytes)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a directory, not a file") from None
    except OSError as error:
        raise DataFormatError(path, f"cannot read file ({error.strerror or error})") from None
    if not head:
        raise DataFormatError(path, "file is empty")
    return "gzip" if head == _GZIP_MAGIC else None


def _open_binary(path: Path, compression: Compression) -> IO[bytes]:
    if compression == "gzip":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _numbered_lines(path: Path, compression: Compression) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line break); decoding errors name their line."""
    number = 0
    try:
        with _open_binary(path, compression) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    raise DataFormatError(path, f"not UTF-8 text ({error.reason})", number) from None
                yield number, text.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as error:
        raise DataFormatError(path, f"cannot decompress/read ({error})", number + 1) from None


def _first_line(path: Path, compression: Compression) -> str:
    for _, text in _numbered_lines(path, compression):
        return text
    raise DataFormatError(path, "file is empty")


def _split_header(path: Path, compression: Compression, sep: str) -> list[str]:
    first = _first_line(path, compression)
    if not first.strip():
        raise DataFormatError(path, "missing header: the first line is blank", line=1)
    return [field.strip() for field in first.split(sep)]


def _check_unique(path: Path, names: Sequence[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataFormatError(path, f"duplicate header column(s) {', '.join(duplicates)}", line=1)


def _read_fields(
    path: Path,
    compression: Compression,
    *,
    sep: str,
    n_fields: int,
    skip_lines: int,
    layout: str,
    split_line: Callable[[str], list[str]] | None = None,
    expected_parts: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """All fields as strings (columns 0..n_fields-1) and the 1-based line of each row; blank lines skipped.

    Pandas does the parsing; when it reports a structural problem, the file is scanned in Python to name
    the first line with the wrong number of fields.
    """
    splitter = split_line or (lambda text: text.split(sep))
    parts = expected_parts or n_fields
    try:
        fields = pd.read_csv(
            path,
            sep=sep,
            header=None,
            skiprows=skip_lines or None,
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,
            quoting=csv.QUOTE_NONE,
            compression=compression,
            encoding="utf-8-sig",
            engine="c",
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({i: pd.Series([], dtype="str") for i in range(n_fields)}), np.zeros(0, np.int64)
    except pd.errors.ParserError as error:
        _raise_first_bad_line(path, compression, splitter, parts, skip_lines, layout)
        match = _PARSER_ERROR.search(str(error))
        if match:
            raise DataFormatError(path, f"malformed line; expected {layout}", int(match[2])) from None
        raise DataFormatError(path, f"malformed file ({str(error).strip()}); expected {layout}") from None
    except UnicodeDecodeError:
        _raise_first_bad_line(path, compression, splitter, parts, skip_lines, layout)
        raise DataFormatError(path, "not UTF-8 text") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataFormatError(path, f"cannot decompress/read ({error})") from None
    if fields.shape[1] != n_fields:
        _raise_first_bad_line(path, compression, splitter, parts, skip_lines, layout)
        # No line has the wrong number of fields: only blank lines after the header.
        return pd.DataFrame({i: pd.Series([], dtype="str") for i in range(n_fields)}), np.zeros(0, np.int64)
    fields.columns = pd.RangeIndex(n_fields)
    lines = np.arange(1 + skip_lines, 1 + skip_lines + len(fields), dtype=np.int64)
    blank = (fields == "").all(axis=1).to_numpy()
    if blank.any():
        keep = ~blank
        fields = fields[keep].reset_index(drop=True)
        lines = lines[keep]
    return fields, lines


def _raise_first_bad_line(
    path: Path,
    compression: Compression,
    splitter: Callable[[str], list[str]],
    parts: int,
    skip_lines: int,
    layout: str,
) -> None:
    for number, text in _numbered_lines(path, compression):
        if number <= skip_lines or not text:
            continue
        found = len(splitter(text))
        if found != parts:
            problem = f"expected {parts} fields ({layout}), found {found}: {_show(text)}"
            raise DataFormatError(path, problem, number)


def _require_nonempty(
    path: Path, fields: pd.DataFrame, lines: np.ndarray, names: list[str], positions: list[int]
) -> None:
    if not len(fields):
        return
    empty = (fields[positions] == "").to_numpy()
    bad_rows = empty.any(axis=1)
    if bad_rows.any():
        row = int(np.flatnonzero(bad_rows)[0])
        name = names[int(np.flatnonzero(empty[row])[0])]
        raise DataFormatError(path, f"missing or empty field {name}", int(lines[row]))


def _numbers(path: Path, values: pd.Series, lines: np.ndarray, name: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    _fail_first(path, ~np.isfinite(numbers), lines, lambda i: f"bad {name} {_show(values.iat[i])}")
    return numbers


def _timestamps(path: Path, values: pd.Series, lines: np.ndarray, name: str) -> np.ndarray:
    """Epoch seconds within what the contracts accept (1970 to 2200); anything else is a malformed line."""
    stamps = _numbers(path, values, lines, name)
    _fail_first(path, (stamps < 0) | (stamps > MAX_TIMESTAMP), lines,
                lambda i: f"{name} {_show(values.iat[i])} is outside 1970-2200 (seconds since the epoch)")
    return stamps


def _fail_first(path: Path, bad: np.ndarray, lines: np.ndarray, describe: Callable[[int], str]) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, describe(row), int(lines[row]))


def _iso_to_epoch(values: pd.Series) -> np.ndarray:
    return _datetimes_to_epoch(pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce"))


def _datetimes_to_epoch(values: pd.Series) -> np.ndarray:
    """UTC datetimes -> float64 epoch seconds (NaN for NaT), exact to the microsecond."""
    naive = values.dt.tz_convert(None).to_numpy().astype("datetime64[us]")
    seconds = naive.astype(np.int64) / 1e6
    seconds[np.isnat(naive)] = np.nan
    return seconds


def _json_id(path: Path, record: dict[str, object], key: str, number: int) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataFormatError(path, f"missing or non-string {key!r}", number)
    text = str(value)
    if not text or any(ch in text for ch in "\t\r\n"):
        raise DataFormatError(path, f"empty or invalid {key!r} {_show(text)}", number)
    return text


def _json_number(path: Path, value: object, key: str, number: int) -> float:
    result = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            result = float(value)
    if not math.isfinite(result):
        raise DataFormatError(path, f"bad {key} {_show(str(value))} (not a number)", number)
    return result


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _show(text: object) -> str:
    shown = str(text)
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + "..."
    return repr(shown)
