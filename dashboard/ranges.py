"""Time ranges, refresh intervals and human-readable ages: the sidebar's vocabulary, free of Streamlit."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

# label -> seconds of history shown
TIME_RANGES: dict[str, float] = {
    "5 min": 5 * 60,
    "15 min": 15 * 60,
    "1 h": 3600,
    "6 h": 6 * 3600,
    "24 h": 24 * 3600,
    "7 days": 7 * 24 * 3600,
}
DEFAULT_RANGE = "1 h"

# label -> seconds between live-panel reruns; None switches auto-refresh off
REFRESH_INTERVALS: dict[str, float | None] = {
    "off": None,
    "1 s": 1,
    "5 s": 5,
    "10 s": 10,
    "30 s": 30,
    "1 min": 60,
}
DEFAULT_REFRESH = "10 s"


class Window(NamedTuple):
    start: float
    end: float

    @property
    def span_s(self) -> float:
        return self.end - self.start


# chart windows end on this grid: reruns and viewers within one slot ask the store identical (cacheable) questions
WINDOW_GRID_S = 5.0


def window(range_label: str, now: float | None = None) -> Window:
    """The [start, end] the charts show, `end` rounded up to the 5 s grid so it still covers `now`.

    An unknown label (stale session state) falls back to the default range.
    """
    current = time.time() if now is None else now
    end = math.ceil(current / WINDOW_GRID_S) * WINDOW_GRID_S
    span = TIME_RANGES.get(range_label, TIME_RANGES[DEFAULT_RANGE])
    return Window(end - span, end)


def refresh_seconds(refresh_label: str) -> float | None:
    return REFRESH_INTERVALS.get(refresh_label, REFRESH_INTERVALS[DEFAULT_REFRESH])


def format_age(age_s: float | None) -> str:
    """'4 s ago', '3 min ago', '2 h ago', '5 d ago'; 'never' for None."""
    if age_s is None:
        return "never"
    age = max(0.0, age_s)
    if age < 90:
        return f"{age:.0f} s ago"
    if age < 90 * 60:
        return f"{age / 60:.0f} min ago"
    if age < 36 * 3600:
        return f"{age / 3600:.0f} h ago"
    return f"{age / 86400:.0f} d ago"


def format_duration(seconds: float | None) -> str:
    """An uptime or a transaction age: '42 s', '7 min', '3.5 h', '2.1 d'."""
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def format_clock(ts: float | None) -> str:
    """Local wall-clock time of a unix timestamp, with the date only when it is not today."""
    if ts is None:
        return "—"
    moment = time.localtime(ts)
    today = time.localtime()
    if moment.tm_yday == today.tm_yday and moment.tm_year == today.tm_year:
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M:%S", moment)


def freshness(latest_ts: float | None, now: float | None = None) -> str:
    """The caption every panel carries: how old its newest sample is."""
    if latest_ts is None:
        return "No data yet"
    current = time.time() if now is None else now
    # the wall-clock times stay true when auto-refresh is off and the page sits still; the age alone would not
    age = format_age(current - latest_ts)
    return f"Data as of {format_clock(latest_ts)} ({age} when drawn at {format_clock(current)})"


def axis_to_unix(value: object) -> float | None:
    """A date-axis value Plotly reports back (a "2026-11-30 10:05:12.345" string of the shifted local clock, or
    epoch ms of it, see figures.to_axis_ms) → unix seconds; None when it is neither."""
    import datetime as _dt

    offset = time.localtime().tm_gmtoff
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value) / 1000.0 - offset
    if isinstance(value, str) and len(value) <= 40:
        try:
            moment = _dt.datetime.fromisoformat(value.strip().replace(" ", "T"))
        except ValueError:
            return None
        return moment.replace(tzinfo=_dt.UTC).timestamp() - offset
    return None


def zoom_window(start: object, end: object, now: float | None = None) -> Window | None:
    """A dragged (or linked `?from=…&to=…`) range, validated: ordered, at least 10 s, not in the future, at most
    the longest range back."""
    try:
        low, high = sorted((float(start), float(end)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    if not (math.isfinite(low) and math.isfinite(high)) or high - low < 10:
        return None
    high = min(high, current + WINDOW_GRID_S)
    low = max(low, current - max(TIME_RANGES.values()))
    return Window(low, high) if high - low >= 10 else None
