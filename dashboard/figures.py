"""Plotly figure builders: plain functions from traces to figures, tested without Streamlit.

No template is set here: pages draw with `st.plotly_chart(theme="streamlit")`, which restyles the figure for the
viewer's light or dark theme. Colours are fixed per series (Tableau 10, readable on both backgrounds) so a line
and its min/max band always match.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from dashboard.series import MAX_POINTS_PER_TRACE, Trace, drawable, segments

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]
RED = "#E45756"
GREEN = "#54A24B"
# more band traces than this turns a chart into mud; past it only the lines are drawn
MAX_BANDED_TRACES = 4
MAX_BAND_RUNS = 8  # past that many gaps a band is more noise than help
# annotations are drawn per event; beyond this many the newest are kept
MAX_EVENT_MARKERS = 60
EVENT_COLOUR = "rgba(150,150,150,0.7)"


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def to_axis_ms(ts: np.ndarray | Sequence[float]) -> np.ndarray:
    """Unix seconds → epoch milliseconds shifted to local time.

    Plotly's date axis renders numbers as UTC wall-clock; shifting by the local offset shows the operator's
    clock, and numeric arrays serialise compactly (strings of dates would triple the payload).
    """
    array = np.asarray(ts, dtype=float)
    offset = time.localtime().tm_gmtoff
    return (array + offset) * 1000.0


def _base_layout(title: str, unit: str, height: int) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
        # under the plot: above it, long target names collide with the title
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0},
        "hovermode": "x unified",
        # keeps the user's zoom and hidden legend entries when the fragment redraws every few seconds
        "uirevision": title,
        "xaxis": {"type": "date"},
        "yaxis": {"title": {"text": unit or None}, "rangemode": "tozero"},
    }


def event_markers(events: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Audit-log events as dotted vertical lines (shapes) with a hoverable marker on top (annotations)."""
    shown = sorted(events, key=lambda e: e.ts)[-MAX_EVENT_MARKERS:]
    xs: np.ndarray | list[float] = to_axis_ms([e.ts for e in shown]) if shown else []
    shapes = [
        {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
         "line": {"color": EVENT_COLOUR, "width": 1, "dash": "dot"}}
        for x in xs
    ]
    annotations = [
        {"x": x, "xref": "x", "y": 1, "yref": "paper", "text": "▼", "showarrow": False,
         "font": {"size": 10, "color": EVENT_COLOUR}, "hovertext": f"{e.kind} {e.target}: {e.message}"}
        for x, e in zip(xs, shown, strict=True)
    ]
    return shapes, annotations


def time_chart(
    traces: Sequence[Trace],
    title: str,
    unit: str = "",
    *,
    events: Sequence[Any] = (),
    x_range: tuple[float, float] | None = None,
    stacked: bool = False,
    reference_lines: Mapping[str, float] | None = None,
    height: int = 260,
    max_points: int = MAX_POINTS_PER_TRACE,
) -> go.Figure:
    """A line (or stacked area) chart over time with min/max bands, event markers and reference lines.

    Every trace is capped at `max_points` keeping spikes; bands are drawn when the store kept a spread and
    there are at most MAX_BANDED_TRACES lines (the band is two extra traces: upper edge, then lower edge
    filled up to it). The figure is assembled as plain dicts and built once without plotly's per-property
    validation, which otherwise costs more than all the store queries of a page together.
    """
    data: list[dict[str, Any]] = []
    drawn = [drawable(t, max_points) for t in traces if len(t)]
    with_bands = not stacked and len(drawn) <= MAX_BANDED_TRACES
    for index, trace in enumerate(drawn):
        colour = PALETTE[index % len(PALETTE)]
        x = to_axis_ms(trace.ts)
        runs = segments(trace) if with_bands and trace.has_band else []
        # a filled band would bridge a gap in the data, so each run between gaps gets its own pair of edges
        for run in runs if len(runs) <= MAX_BAND_RUNS else []:
            edge = {"type": "scatter", "x": to_axis_ms(run.ts), "mode": "lines", "line": {"width": 0, "color": colour},
                    "showlegend": False, "hoverinfo": "skip", "legendgroup": trace.name}
            data.append({**edge, "y": run.vmax, "name": f"{trace.name} max"})
            data.append({**edge, "y": run.vmin, "name": f"{trace.name} min", "fill": "tonexty",
                         "fillcolor": _rgba(colour, 0.2)})
        line: dict[str, Any] = {"type": "scatter", "x": x, "y": trace.value, "mode": "lines", "name": trace.name,
                                "legendgroup": trace.name, "line": {"width": 1.5, "color": colour}}
        if stacked:
            line["stackgroup"] = "stack"
        data.append(line)
    layout = _base_layout(title, unit, height)
    if x_range is not None:
        layout["xaxis"]["range"] = list(to_axis_ms(list(x_range)))
    span = (x_range[1] - x_range[0]) if x_range is not None else max(
        (float(t.ts[-1] - t.ts[0]) for t in drawn), default=0.0)
    # one-line tick labels: plotly's default adds a date line under the first tick, which the legend then hits
    # seconds on a zoomed span of minutes, where "%H:%M" would repeat the same label
    layout["xaxis"]["tickformat"] = "%H:%M:%S" if span <= 900 else "%H:%M" if span <= 86400 else "%b %d"
    shapes, annotations = event_markers(events)
    for label, level in (reference_lines or {}).items():
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": level, "y1": level,
                       "line": {"color": RED, "dash": "dash", "width": 1}})
        annotations.append({"xref": "paper", "yref": "y", "x": 0, "y": level, "text": label, "showarrow": False,
                            "xanchor": "left", "yanchor": "bottom", "font": {"size": 10, "color": RED}})
    if not drawn:
        annotations.append({"text": "no data yet in this range", "xref": "paper", "yref": "paper", "x": 0.5,
                            "y": 0.5, "showarrow": False})
    layout["shapes"] = shapes
    layout["annotations"] = annotations
    return go.Figure({"data": data, "layout": layout}, _validate=False)


# Drag-to-zoom needs points under the dragged box (Plotly reports a box selection only with the points inside it).
# Invisible markers on at most this many samples of one line are enough for any drag wider than 1/ZOOM_HANDLE_POINTS
# of the window, and cost the browser a fraction of an invisible marker on every sample of every line and band edge
# (thousands of SVG paths per page: docs/design-notes.md, "Streamlit").
ZOOM_HANDLE_POINTS = 120


def add_zoom_handles(figure: go.Figure, points: int = ZOOM_HANDLE_POINTS) -> None:
    """Add an invisible, hover-less trace of at most `points` samples of the figure's longest line, so that a
    horizontal box drag over the data selects some (the samples lie inside the y axis range by construction)."""
    lines = [t for t in figure.data if getattr(t, "mode", None) == "lines" and t.hoverinfo != "skip"
             and t.x is not None and len(t.x)]
    if not lines:
        return  # no data in the range: nothing to zoom into
    longest = max(lines, key=lambda t: len(t.x))
    x, y = np.asarray(longest.x), np.asarray(longest.y)
    picked = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).round().astype(int))
    figure.add_trace(go.Scatter(
        x=x[picked], y=y[picked], mode="markers", name="zoom handles", showlegend=False,
        # "none", not "skip": a skipped trace is left out of selections too
        hoverinfo="none",
        marker={"size": 4, "opacity": 0}, selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}},
    ))


def budget_bar(used_by_state: Mapping[str, float], budget: float | None, limit: float | None, title: str) -> go.Figure:
    """One horizontal stacked bar (connections by state) against the fleet's budget and the server's limit."""
    figure = go.Figure()
    for index, (state, count) in enumerate(sorted(used_by_state.items())):
        figure.add_trace(
            go.Bar(
                y=[""], x=[count], name=state, orientation="h",
                marker={"color": PALETTE[index % len(PALETTE)]}, hovertemplate=f"{state}: %{{x}}<extra></extra>",
            )
        )
    if budget:
        figure.add_vline(x=budget, line={"color": RED, "dash": "dash"}, annotation_text=f"budget {budget:g}")
    if limit:
        figure.add_vline(x=limit, line={"color": RED}, annotation_text=f"max {limit:g}", annotation_position="bottom")
    figure.update_layout(
        barmode="stack", height=170, title={"text": title, "font": {"size": 14}},
        margin={"l": 10, "r": 10, "t": 48, "b": 10},
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"},
    )
    upper = max(sum(used_by_state.values()), budget or 0, limit or 0)
    figure.update_xaxes(range=[0, upper * 1.08 if upper else 1])
    return figure


def usage_bar(used: float, capacity: float | None, title: str, unit_divisor: float = 1.0, unit: str = "") -> go.Figure:
    """Used vs capacity as a bar that turns red past 90%; capacity None or 0 means 'unlimited'."""
    shown = used / unit_divisor
    cap = (capacity or 0) / unit_divisor
    ratio = shown / cap if cap else 0.0
    colour = RED if ratio >= 0.9 else PALETTE[0]
    figure = go.Figure(
        go.Bar(y=[""], x=[shown], orientation="h", marker={"color": colour},
               hovertemplate=f"%{{x:.1f}} {unit}<extra></extra>", name="used")
    )
    if cap:
        figure.add_vline(x=cap, line={"color": RED, "dash": "dash"}, annotation_text=f"max {cap:.0f} {unit}")
    figure.update_layout(height=130, title={"text": title, "font": {"size": 14}}, showlegend=False,
                         margin={"l": 10, "r": 10, "t": 36, "b": 10})
    figure.update_xaxes(range=[0, max(shown, cap) * 1.08 or 1], title_text=unit or None)
    return figure
