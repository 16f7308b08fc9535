"""Small static SVG charts for the exported reports: a few KB each instead of 4.8 MB of plotly.js, the same in
the browser and in the PDF (no toolbar printed over the title, no script that must run before printing).

One plotting area with an optional right axis; series are lines, markers or bars on numeric x (categories are
0, 1, 2 … with their labels as ticks). Every text is escaped: run ids and labels come from the store.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 60, 34, 48
GRID = "#d0d7de"
TEXT = "#1f2328"
MUTED = "#57606a"


@dataclass
class Series:
    name: str
    points: list[tuple[float, float | None]]
    kind: str = "line"  # line | markers | lines+markers | bar
    colour: str = "#0969da"
    dash: str | None = None  # e.g. "4 3"
    right_axis: bool = False
    labels: list[str] = field(default_factory=list)  # text above each point (lines)
    opacity: float = 1.0
    bar_width: float = 0.6  # in x units
    hollow_markers: list[bool] = field(default_factory=list)  # per point: drawn as an "x" instead of a dot


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def chart(title: str, series: Sequence[Series], *, x_range: tuple[float, float], x_ticks: Sequence[tuple[float, str]],
          y_title: str = "", x_title: str = "", y_max: float | None = None, y2_max: float | None = None,
          y2_title: str = "") -> str:
    """One SVG element (inline in the report's HTML)."""
    x0, x1 = x_range
    span_x = (x1 - x0) or 1.0
    left_values = [y for s in series if not s.right_axis for _, y in s.points if y is not None]
    top_left = y_max if y_max is not None else _nice_max(max(left_values, default=1.0) * 1.05)
    right_values = [y for s in series if s.right_axis for _, y in s.points if y is not None]
    top_right = y2_max if y2_max is not None else _nice_max(max(right_values, default=1.0) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / span_x * plot_w

    def py(y: float, right: bool = False) -> float:
        top = top_right if right else top_left
        return TOP + plot_h - (max(0.0, min(y, top)) / top) * plot_h

    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
           f'style="max-width:{WIDTH}px" role="img" aria-label="{esc(title)}" font-family="system-ui, sans-serif">',
           f'<text x="{LEFT}" y="20" font-size="14" font-weight="600" fill="{TEXT}">{esc(title)}</text>']
    for i in range(5):
        value = top_left * i / 4
        y = py(value)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="{GRID}" />')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" fill="{MUTED}" '
                   f'text-anchor="end">{esc(_fmt(value))}</text>')
        if right_values or y2_max is not None:
            out.append(f'<text x="{LEFT + plot_w + 6}" y="{py(top_right * i / 4, True) + 4:.1f}" font-size="11" '
                       f'fill="{MUTED}">{esc(_fmt(top_right * i / 4))}</text>')
    for x, label in x_ticks:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + plot_h + 16}" font-size="11" fill="{MUTED}" '
                   f'text-anchor="middle">{esc(label)}</text>')
    if y_title:
        out.append(f'<text transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" font-size="11" fill="{MUTED}" '
                   f'text-anchor="middle">{esc(y_title)}</text>')
    if y2_title:
        out.append(f'<text transform="translate({WIDTH - 10} {TOP + plot_h / 2}) rotate(90)" font-size="11" '
                   f'fill="{MUTED}" text-anchor="middle">{esc(y2_title)}</text>')
    if x_title:
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" font-size="11" fill="{MUTED}" '
                   f'text-anchor="middle">{esc(x_title)}</text>')
    for s in series:
        points = [(x, y) for x, y in s.points if y is not None]
        if s.kind == "bar":
            half = s.bar_width / span_x * plot_w / 2
            for x, y in points:
                top = py(y, s.right_axis)
                out.append(f'<rect x="{px(x) - half:.1f}" y="{top:.1f}" width="{2 * half:.1f}" '
                           f'height="{TOP + plot_h - top:.1f}" fill="{s.colour}" opacity="{s.opacity}" />')
            continue
        if "line" in s.kind and len(points) > 1:
            path = " ".join(f"{px(x):.1f},{py(y, s.right_axis):.1f}" for x, y in points)
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"{dash} />')
        if "markers" in s.kind:
            for index, (x, y) in enumerate(points):
                cx, cy = px(x), py(y, s.right_axis)
                if index < len(s.hollow_markers) and s.hollow_markers[index]:
                    out.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},'
                               f'{cy + 5:.1f} L{cx + 5:.1f},{cy - 5:.1f}" stroke="{s.colour}" stroke-width="2" />')
                else:
                    out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{s.colour}" />')
        for (x, y), label in zip(points, s.labels, strict=False):
            out.append(f'<text x="{px(x):.1f}" y="{py(y, s.right_axis) - 9:.1f}" font-size="11" fill="{TEXT}" '
                       f'text-anchor="middle">{esc(label)}</text>')
    legend_x = float(LEFT + plot_w)
    for s in reversed([s for s in series if s.name]):
        width = 14 + 6.5 * len(s.name)
        legend_x -= width + 10
        out.append(f'<rect x="{legend_x:.1f}" y="12" width="10" height="10" fill="{s.colour}" />'
                   f'<text x="{legend_x + 14:.1f}" y="21" font-size="11" fill="{TEXT}">{esc(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
