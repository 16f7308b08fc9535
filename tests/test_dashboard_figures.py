"""Figure builders, series shaping and time ranges; the spike test goes through a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest

from core.samples import Sample
from core.store import Store
from dashboard import figures, queries, ranges
from dashboard.series import (
    MAX_POINTS_PER_TRACE,
    Trace,
    cap_points,
    drawable,
    sum_traces,
    trace_from_points,
)
from dashboard.store_cache import CachedStore

pytestmark = pytest.mark.fast  # no services: the fast tier


def noisy(n: int, spike_at: int | None = None, spike: float = 1000.0, start: float = 0.0) -> Trace:
    rng = np.random.default_rng(7)
    values = 10 + rng.normal(0, 1, n)
    if spike_at is not None:
        values[spike_at] = spike
    return Trace("t", start + np.arange(n) * 5.0, values)


def y_values(figure: go.Figure, name: str) -> np.ndarray:
    trace = next(t for t in figure.data if t.name == name)
    return np.asarray(trace.y, dtype=float)


def test_cap_points_keeps_the_spike_and_the_cap() -> None:
    trace = noisy(50_000, spike_at=31_337)
    capped = cap_points(trace, 2000)
    assert len(capped) <= 2000
    assert capped.value.max() == 1000.0
    assert capped.ts[np.argmax(capped.value)] == trace.ts[31_337]
    assert capped.value.min() == trace.value.min()
    assert np.all(np.diff(capped.ts) > 0)  # still in time order
    assert capped.vmax.max() == 1000.0  # the band reaches the spike too


def test_cap_points_leaves_short_traces_alone() -> None:
    trace = noisy(500)
    assert cap_points(trace, 2000) is trace


def test_time_chart_traces_bands_and_cap() -> None:
    big = noisy(20_000, spike_at=12_345, spike=5000.0)
    banded = Trace("latency", big.ts, big.value, big.value - 1, big.value + 1)
    figure = figures.time_chart([banded], "Latency", "ms")
    # upper band edge, lower band edge filled to it, then the line
    assert [t.name for t in figure.data] == ["latency max", "latency min", "latency"]
    assert figure.data[1].fill == "tonexty"
    assert all(len(t.x) <= MAX_POINTS_PER_TRACE for t in figure.data)
    assert y_values(figure, "latency").max() == 5000.0
    assert y_values(figure, "latency max").max() == 5001.0


def test_zoom_handles_are_few_invisible_points_on_the_data_not_a_marker_per_sample() -> None:
    """Drag-to-zoom needs selectable points; a marker on every sample of every line and band edge cost the browser
    thousands of SVG paths per page (the Instances page drew 3,600), so one bounded trace carries them."""
    big = noisy(20_000)
    banded = Trace("latency", big.ts, big.value, big.value - 1, big.value + 1)
    figure = figures.time_chart([banded, noisy(300)], "Latency", "ms")
    lines = list(figure.data)
    figures.add_zoom_handles(figure)
    assert list(figure.data[:-1]) == lines and all(t.mode == "lines" for t in lines)  # the lines stay marker-free
    handles = figure.data[-1]
    assert handles.mode == "markers" and handles.marker.opacity == 0 and not handles.showlegend
    assert handles.hoverinfo == "none"  # "skip" would leave it out of box selections too
    assert 2 <= len(handles.x) <= figures.ZOOM_HANDLE_POINTS
    longest = max(lines[2:], key=lambda t: len(t.x))  # the 20,000-sample line (capped), not a band edge
    assert handles.x[0] == longest.x[0] and handles.x[-1] == longest.x[-1]  # spans the whole line
    assert set(np.asarray(handles.y)) <= set(np.asarray(longest.y))  # on the data: inside the y axis range
    empty = figures.time_chart([], "Nothing", "ms")
    figures.add_zoom_handles(empty)
    assert len(empty.data) == 0  # nothing to zoom into


def test_many_traces_drop_bands_and_stacked_has_no_bands() -> None:
    traces = [Trace(f"s{i}", np.arange(10.0), np.arange(10.0), np.zeros(10), np.full(10, 20.0)) for i in range(6)]
    assert len(figures.time_chart(traces, "many").data) == 6
    stacked = figures.time_chart(traces[:2], "stacked", stacked=True)
    assert len(stacked.data) == 2
    assert {t.stackgroup for t in stacked.data} == {"stack"}


def test_events_become_vertical_lines_and_empty_chart_says_so() -> None:
    events = [SimpleNamespace(ts=100.0 + i, kind="drain", target="web/web-1", message=f"m{i}") for i in range(3)]
    figure = figures.time_chart([], "Nothing", events=events, reference_lines={"budget": 60})
    lines = [s for s in figure.layout.shapes if s.yref == "paper"]
    assert len(lines) == 3
    hover = [a.hovertext for a in figure.layout.annotations if a.hovertext]
    assert hover == ["drain web/web-1: m0", "drain web/web-1: m1", "drain web/web-1: m2"]
    assert any(a.text == "no data yet in this range" for a in figure.layout.annotations)
    assert any(s.y0 == 60 for s in figure.layout.shapes)  # the budget line


def test_figures_follow_the_streamlit_theme() -> None:
    """No template is hard-coded: inside the app, figures get Streamlit's, which follows light/dark."""
    import plotly.io as pio
    from streamlit.elements.lib.streamlit_plotly_theme import configure_streamlit_plotly_theme

    configure_streamlit_plotly_theme()  # what `import streamlit` does before any page builds a figure
    figure = figures.time_chart([noisy(10)], "x")
    assert pio.templates.default == "streamlit"
    assert figure.layout.template == pio.templates["streamlit"]


def test_sum_traces_aligns_series_sampled_at_different_times() -> None:
    a = Trace("a", [0, 10, 20, 30], [1, 1, 1, 1])
    b = Trace("b", [2, 12, 22, 32], [2, 2, 2, 2])
    total = sum_traces("sum", [a, b], 0, 40, 4)
    assert list(total.value) == [3, 3, 3, 3]
    assert list(total.ts) == [5, 15, 25, 35]


def test_trace_from_points_and_axis_shift() -> None:
    trace = trace_from_points("x", [(1.0, 2.0, 1.5, 2.5), (2.0, 3.0, 3.0, 3.0)])
    assert trace.has_band and trace.last == 3.0
    assert figures.to_axis_ms([0.0])[0] == time.localtime().tm_gmtoff * 1000.0


def test_budget_and_usage_bars() -> None:
    bar = figures.budget_bar({"idle": 11, "active": 2}, budget=60, limit=100, title="c")
    assert [t.name for t in bar.data] == ["active", "idle"]
    assert sorted(s.x0 for s in bar.layout.shapes) == [60, 100]
    usage = figures.usage_bar(95 * 2**20, 100 * 2**20, "m", 2**20, "MiB")
    assert usage.data[0].marker.color == figures.RED
    assert figures.usage_bar(10, None, "m").layout.shapes == ()


def test_ranges() -> None:
    assert ranges.window("6 h", now=100_000.0) == (100_000.0 - 21_600, 100_000.0)
    assert ranges.window("5 min", now=1_001.5) == (705.0, 1_005.0)  # end on the 5 s grid, still covering now
    assert ranges.window("bogus", now=10_000.0).span_s == 3600  # stale session state falls back to the default
    assert ranges.refresh_seconds("off") is None and ranges.refresh_seconds("1 min") == 60
    assert [ranges.format_age(a) for a in (None, 4, 300, 7200, 3 * 86400)] == [
        "never", "4 s ago", "5 min ago", "2 h ago", "3 d ago"]
    assert ranges.freshness(None) == "No data yet"
    assert "(12 s ago when drawn at " in ranges.freshness(1000.0, now=1012.0)


def test_spike_survives_store_and_figure(tmp_path: Path) -> None:
    """24 h of one 5 s series with a single spike: the store buckets it, the chart still shows the spike."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    now = 1_800_000_000.0
    ts = now - np.arange(24 * 720)[::-1] * 5.0
    values = np.full(len(ts), 20.0)
    values[9_999] = 900.0
    store.write_samples(Sample("instance", "web/web-1", "latency_ms", float(v), float(t), "ms")
                        for t, v in zip(ts, values, strict=True))
    store.rollup(now=now)
    window = ranges.window("24 h", now)
    traces = queries.fetch(store, window, "instance", "latency_ms")
    assert 100 < len(traces[0]) <= queries.CHART_POINTS
    figure = figures.time_chart(traces, "latency", "ms", x_range=(window.start, window.end))
    assert y_values(figure, "web/web-1 max").max() == pytest.approx(900.0)
    assert y_values(figure, "web/web-1").max() < 900.0  # the mean of its bucket: the band is what keeps it
    assert all(len(t.x) <= MAX_POINTS_PER_TRACE for t in figure.data)
    store.close()


def test_cached_store_answers_repeats_once_and_expires(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    store.write_samples([Sample("redis", "redis:main", "ops_per_s", 5.0, 100.0)])
    clock = [0.0]
    cached = CachedStore(store, clock=lambda: clock[0])
    ids = [i.id for i in cached.find_series(source="redis")]
    first = cached.query(ids, 0, 200)
    assert cached.latest(source="redis")[0].value == 5.0
    store.write_samples([Sample("redis", "redis:main", "ops_per_s", 7.0, 150.0)])
    assert cached.query(ids, 0, 200) == first  # same slot: the cached answer
    assert cached.latest(source="redis")[0].value == 5.0  # still the cached tile value
    clock[0] = 10.0  # past every TTL
    assert [p.value for p in cached.query(ids, 0, 200)[ids[0]]] == [5.0, 7.0]
    assert cached.latest(source="redis")[0].value == 7.0
    assert cached.hits == 2 and cached.misses == 5
    clock[0] = 100.0
    cached.latest(source="redis")
    assert len(cached) == 1  # expired answers are dropped, not kept until the LRU bound
    assert cached.replicas() == []  # everything else passes through
    store.close()


def test_a_stretch_without_samples_breaks_the_line_instead_of_ramping_across_it() -> None:
    ts = np.concatenate([np.arange(0, 60, 5.0), np.arange(3600, 3660, 5.0)])  # an hour with nothing measured
    values = np.concatenate([np.full(12, 100.0), np.full(12, 0.0)])
    broken = drawable(Trace("x", ts, values))
    assert len(broken) == len(ts) + 2
    first, second = np.flatnonzero(np.isnan(broken.value))
    assert (broken.ts[first - 1], broken.ts[first], broken.ts[second], broken.ts[second + 1]) == (55, 60, 3595, 3600)
    figure = figures.time_chart([Trace("x", ts, values)], "requests", "1/s")
    drawn = next(trace for trace in figure.data if trace.name == "x")
    assert np.isnan(np.asarray(drawn.y, dtype=float)).sum() == 2
    banded = figures.time_chart([Trace("b", ts, values, values - 1, values + 1)], "latency", "ms")
    # one pair of band edges per run between gaps, so the fill never bridges the unmeasured hour
    assert [t.name for t in banded.data] == ["b max", "b min", "b max", "b min", "b"]
    steady = Trace("y", np.arange(0, 600, 5.0), np.ones(120))
    assert len(drawable(steady)) == len(steady), "regular samples are left alone"
    long_with_gap = Trace("z", np.concatenate([np.arange(0, 50_000, 5.0), np.arange(90_000, 140_000, 5.0)]),
                          np.ones(20_000))
    capped = drawable(long_with_gap, MAX_POINTS_PER_TRACE)
    assert len(capped) <= MAX_POINTS_PER_TRACE and np.isnan(capped.value).sum() == 2
