"""How values are written for people, the same way in the terminal, the studio and notebooks."""

from __future__ import annotations

import time
from datetime import datetime

__all__ = [
    "SHORT_ID",
    "ago",
    "clip",
    "clock",
    "elapsed",
    "local_time",
    "money",
    "number",
    "short_id",
    "timestamp",
]

SHORT_ID = 8
"""How many characters of an id listings show; any unique prefix of a tape id works as an id."""


def short_id(value: str | None) -> str:
    """The id as listings show it (its first characters)."""
    return (value or "")[:SHORT_ID]


def local_time(ts: float | None) -> str:
    """Seconds since the epoch as local time, to the minute ("" for None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def clock(ts: float) -> str:
    """The local time of day, to the second."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def timestamp(ts: float) -> str:
    """The local date and time, to the millisecond."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def elapsed(seconds: float) -> str:
    """A time between two steps as "+12 ms", "+3.4 s" or "+2.5 min" ("" when under 0.5 ms)."""
    if seconds < 0.0005:
        return ""
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"+{seconds:.1f} s"
    return f"+{seconds / 60:.1f} min"


def ago(ts: float | None) -> str:
    """How long ago a moment was, in its largest whole unit ("3 h ago", "just now")."""
    if ts is None:
        return ""
    seconds = max(0.0, time.time() - ts)
    for size, unit in ((86400 * 365, "y"), (86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def money(value: float | None) -> str:
    """A cost in dollars, with four decimals below one cent ("" for unknown)."""
    if value is None:
        return ""
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.4f}"
    return f"${value:.2f}"


def number(value: float | None) -> str:
    """A number with thousands separators ("" for None)."""
    if value is None:
        return ""
    return f"{value:,}"


def clip(text: str, limit: int | None) -> str:
    """The text cut to `limit` characters, saying how many were left out (None: no limit)."""
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"
