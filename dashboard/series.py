"""Time-series shaping between the store and the figures: traces, capping, rates, sums across series.

Everything here is numpy over plain arrays so it is cheap on every rerun and easy to test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_POINTS_PER_TRACE = 2000


@dataclass
class Trace:
    """One line on a chart; `vmin`/`vmax` are the per-bucket extremes the store kept (the band)."""

    name: str
    ts: np.ndarray
    value: np.ndarray
    vmin: np.ndarray = field(default_factory=lambda: np.empty(0))
    vmax: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __post_init__(self) -> None:
        self.ts = np.asarray(self.ts, dtype=float)
        self.value = np.asarray(self.value, dtype=float)
        self.vmin = self.value if len(self.vmin) != len(self.value) else np.asarray(self.vmin, dtype=float)
        self.vmax = self.value if len(self.vmax) != len(self.value) else np.asarray(self.vmax, dtype=float)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def has_band(self) -> bool:
        return bool(len(self)) and bool(np.any(self.vmax > self.vmin))

    @property
    def last(self) -> float | None:
        return float(self.value[-1]) if len(self) else None


def trace_from_points(name: str, points: Sequence[Sequence[float]]) -> Trace:
    """Points are the store's (ts, value, vmin, vmax) tuples, oldest first."""
    if not points:
        return Trace(name, np.empty(0), np.empty(0))
    array = np.asarray(points, dtype=float)
    return Trace(name, array[:, 0], array[:, 1], array[:, 2], array[:, 3])


def trace_from_columns(name: str, columns: Sequence[Sequence[float]]) -> Trace:
    """The store's `Columns` (ts, value, vmin, vmax arrays of doubles): numpy reads the buffers directly, so a chart
    costs no Python object per point on its way from SQLite to plotly."""
    arrays = []
    for column in columns:
        array = np.frombuffer(column, dtype=float) if len(column) else np.empty(0)  # type: ignore[call-overload]
        # a view of the (possibly cached, shared) store answer: writing through it would change other sessions' charts
        array.flags.writeable = False
        arrays.append(array)
    return Trace(name, *arrays)


GAP_FACTOR = 3.0


def gap_edges(trace: Trace, factor: float = GAP_FACTOR) -> np.ndarray:
    """Two times inside every stretch with no samples (a stopped collector, a fleet that was down): one typical
    step after the last sample and one before the next. A gap is a step over `factor` times the trace's typical
    (median) step, found on the trace as the store returned it, before capping makes the spacing irregular."""
    if len(trace) < 3:
        return np.empty(0)
    steps = np.diff(trace.ts)
    typical = float(np.median(steps))
    if typical <= 0:
        return np.empty(0)
    gaps = np.flatnonzero(steps > factor * typical)
    return np.sort(np.concatenate([trace.ts[gaps] + typical, trace.ts[gaps + 1] - typical]))


def with_breaks(trace: Trace, at: np.ndarray) -> Trace:
    """NaN points at the times `at`: plotly breaks a line there (a stacked area drops to zero), instead of drawing
    a straight ramp across hours nobody measured."""
    if not len(at) or not len(trace):
        return trace
    where = np.searchsorted(trace.ts, at)
    return Trace(
        trace.name,
        np.insert(trace.ts, where, at),
        np.insert(trace.value, where, np.nan),
        np.insert(trace.vmin, where, np.nan),
        np.insert(trace.vmax, where, np.nan),
    )


def segments(trace: Trace) -> list[Trace]:
    """The runs of a broken trace between its NaN points (a filled band cannot skip a gap, so it is drawn per run)."""
    breaks = np.flatnonzero(np.isnan(trace.value))
    bounds = [0, *breaks.tolist(), len(trace)]
    runs = []
    for start, end in itertools.pairwise(bounds):
        first = start + 1 if start in breaks else start
        if end > first:
            runs.append(Trace(trace.name, trace.ts[first:end], trace.value[first:end], trace.vmin[first:end],
                              trace.vmax[first:end]))
    return runs


def drawable(trace: Trace, max_points: int = MAX_POINTS_PER_TRACE) -> Trace:
    """What a chart draws of a trace: capped (spikes kept) and broken at gaps, `max_points` points in all."""
    gaps = gap_edges(trace)[: max_points // 4]  # a flapping source must not eat the point budget
    return with_breaks(cap_points(trace, max_points - len(gaps)), gaps)


def cap_points(trace: Trace, max_points: int = MAX_POINTS_PER_TRACE) -> Trace:
    """At most `max_points` points, keeping every bucket's lowest and highest sample (M4-style).

    Plain decimation would drop a one-sample spike; here each of max_points/2 buckets keeps the sample with
    its minimum and the one with its maximum, in time order, and the band widens to the bucket's extremes.
    """
    n = len(trace)
    if n <= max_points:
        return trace
    buckets = max(1, max_points // 2)
    bucket_of = (np.arange(n) * buckets) // n
    starts = np.flatnonzero(np.r_[True, bucket_of[1:] != bucket_of[:-1]])
    keep: list[int] = []
    band_low = np.minimum.reduceat(trace.vmin, starts)
    band_high = np.maximum.reduceat(trace.vmax, starts)
    lows: list[float] = []
    highs: list[float] = []
    bounds = [*starts.tolist(), n]
    for index in range(len(starts)):
        lo, hi = bounds[index], bounds[index + 1]
        chunk = trace.value[lo:hi]
        i_min = lo + int(np.argmin(chunk))
        i_max = lo + int(np.argmax(chunk))
        for i in sorted({i_min, i_max}):
            keep.append(i)
            lows.append(float(band_low[index]))
            highs.append(float(band_high[index]))
    idx = np.asarray(keep)
    return Trace(trace.name, trace.ts[idx], trace.value[idx], np.asarray(lows), np.asarray(highs))


def sum_traces(name: str, traces: Iterable[Trace], start: float, end: float, buckets: int) -> Trace:
    """Add series that were sampled at slightly different times by putting them on one time grid.

    Each series is averaged within a grid cell first (so a series sampled twice in a cell is not counted
    twice), then the cells are summed; the band is the sum of the mins and the sum of the maxes.
    """
    traces = [t for t in traces if len(t)]
    if not traces or end <= start:
        return Trace(name, np.empty(0), np.empty(0))
    buckets = max(1, buckets)
    step = (end - start) / buckets
    total = np.zeros(buckets)
    low = np.zeros(buckets)
    high = np.zeros(buckets)
    seen = np.zeros(buckets, dtype=bool)
    for trace in traces:
        cell = np.clip(((trace.ts - start) // step).astype(int), 0, buckets - 1)
        counts = np.bincount(cell, minlength=buckets)
        present = counts > 0
        safe = np.where(present, counts, 1)
        total += np.bincount(cell, weights=trace.value, minlength=buckets) / safe
        low += np.bincount(cell, weights=trace.vmin, minlength=buckets) / safe
        high += np.bincount(cell, weights=trace.vmax, minlength=buckets) / safe
        seen |= present
    centres = start + (np.arange(buckets) + 0.5) * step
    return Trace(name, centres[seen], total[seen], low[seen], high[seen])



def count_traces(name: str, traces: Iterable[Trace], start: float, end: float, buckets: int) -> Trace:
    """How many 0/1 series are 1 in each cell of one time grid: a series counts once in a cell where its max is
    >= 1 (bucketed rows keep the max), so the result is a whole number of series, never an average like 0.25."""
    traces = [t for t in traces if len(t)]
    if not traces or end <= start:
        return Trace(name, np.empty(0), np.empty(0))
    buckets = max(1, buckets)
    step = (end - start) / buckets
    total = np.zeros(buckets)
    seen = np.zeros(buckets, dtype=bool)
    for trace in traces:
        cell = np.clip(((trace.ts - start) // step).astype(int), 0, buckets - 1)
        high = np.zeros(buckets)
        np.maximum.at(high, cell, np.asarray(trace.vmax, dtype=float))
        total += high >= 1
        seen[cell] = True
    centres = start + (np.arange(buckets) + 0.5) * step
    return Trace(name, centres[seen], total[seen], total[seen], total[seen])
