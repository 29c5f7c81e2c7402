"""Human-friendly durations for command lines: "90", "90s", "30m", "1.5h", "2d", "1w" -> seconds."""

from __future__ import annotations

import math
import re

UNIT_SECONDS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_DURATION = re.compile(r"(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))\s*(?P<unit>[A-Za-z]*)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a positive number with an optional unit s, m, h, d or w (no unit = seconds).

    Raises ValueError with a one-line message for empty, malformed, zero or negative durations and unknown
    units.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '90s', '30m' or '1h', got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty duration; expected something like '90s', '30m', '1h', '2d' or '1w'")
    match = _DURATION.fullmatch(stripped)
    if match is None:
        raise ValueError(f"invalid duration {text!r}; expected a number with optional unit s, m, h, d or w")
    unit = match["unit"]
    if unit and unit not in UNIT_SECONDS:
        raise ValueError(f"unknown unit {unit!r} in duration {text!r}; use s, m, h, d or w")
    value = float(match["number"])
    if value < 0:
        raise ValueError(f"negative duration {text!r}; durations must be positive")
    if value == 0:
        raise ValueError(f"zero duration {text!r}; durations must be positive")
    seconds = value * UNIT_SECONDS[unit or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"duration {text!r} is too large")
    return seconds
