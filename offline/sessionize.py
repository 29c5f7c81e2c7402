"""Cut per-user event logs into sessions at inactivity gaps."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def sessionize(frame: pd.DataFrame, gap_s: float) -> pd.DataFrame:
    """Events of ``frame`` (with ``user_id``) sorted by (user, time, input order) and cut into sessions.

    A new session starts at a user's first event and whenever the time since that user's previous event
    is greater than ``gap_s`` (a gap of exactly ``gap_s`` stays in the session). ``session_id`` becomes
    ``f"{user_id}:{n}"`` with n = 0, 1, 2, ... per user; other columns are kept, index reset.
    """
    if "user_id" not in frame.columns:
        raise ValueError("sessionize needs a user_id column")
    if not (math.isfinite(gap_s) and gap_s > 0):
        raise ValueError(f"session gap must be a positive number of seconds, got {gap_s!r}")
    n = len(frame)
    timestamps = frame["timestamp"].to_numpy(dtype=np.float64)
    if np.isnan(timestamps).any():
        raise ValueError("sessionize needs timestamps without NaN")
    user_codes, _ = pd.factorize(frame["user_id"].astype("str"), sort=True)
    order = np.lexsort((np.arange(n), timestamps, user_codes))
    result = frame.iloc[order].reset_index(drop=True)
    codes = user_codes[order]
    times = timestamps[order]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = codes[1:] != codes[:-1]
    new_session = new_user.copy()
    new_session[1:] |= np.diff(times) > gap_s
    session_number = np.cumsum(new_session) - 1  # global, in sorted order
    user_start = np.flatnonzero(new_user)
    first_session_of_user = np.repeat(session_number[user_start], np.diff(np.append(user_start, n)))
    within_user = session_number - first_session_of_user
    users = result["user_id"].astype("str")
    result["session_id"] = users + ":" + pd.Series(within_user, dtype=np.int64).astype("str")
    columns = ["session_id", *[c for c in result.columns if c != "session_id"]]
    result = result[columns]
    logger.debug("sessionized %d events of %d users into %d sessions", n, len(user_start), new_session.sum())
    return result
