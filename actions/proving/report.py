"""Scorecard exports: a self-contained HTML report and a PDF printed by headless Chromium.

The HTML must open on an air-gapped laptop years later: its charts are static inline SVG (svg_charts.py, a few KB;
embedding plotly.js made every report 4.8 MB and printed Plotly's toolbar over the chart titles), no script, no
external URL. The PDF is that same HTML printed by Chromium with every evidence block expanded. Status marks are
text badges, never emoji (a server without an emoji font prints empty boxes).
"""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from actions.proving import svg_charts
from actions.proving.scorecard import LEVELS, RunSummary, Scorecard
from core.store import Fact

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#b7791f", "fail": "#cf222e", "unknown": "#6e7781"}
LEVEL_COLOURS = {"Bronze": "#a0522d", "Silver": "#8a8f98", "Gold": "#c9a227", None: "#6e7781"}


# ------------------------------------------------------------------------------------------------------ figures


def points_figure(card: Scorecard) -> go.Figure:
    """Earned vs possible points per level."""
    earned = [sum(r.earned for r in card.results if r.rule.level == lv) for lv in LEVELS]
    possible = [sum(r.rule.points for r in card.results if r.rule.level == lv) for lv in LEVELS]
    figure = go.Figure([
        go.Bar(name="possible", x=list(LEVELS), y=possible, marker_color="#d0d7de"),
        go.Bar(name="earned", x=list(LEVELS), y=earned, marker_color=[LEVEL_COLOURS[lv] for lv in LEVELS]),
    ])
    figure.update_layout(barmode="overlay", title="Points per level", height=300, margin={"t": 40, "b": 30},
                         yaxis_title="points")
    return figure


def run_labels(runs: Sequence[RunSummary]) -> list[str]:
    """One distinct, readable label per run (its local time; #2, #3... when two runs share a minute)."""
    labels: list[str] = []
    for run in runs:
        label = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.ts))
        repeat = sum(1 for seen in labels if seen == label or seen.startswith(f"{label} #"))
        labels.append(f"{label} #{repeat + 1}" if repeat else label)
    return labels


def trend_figure(runs: Sequence[RunSummary]) -> go.Figure:
    """% of points per past run, with the level reached as the marker label, one category tick per run.

    On a date axis a single run zooms to a sub-second range (ticks like 12:00:00.0005); runs also come at irregular
    intervals, so evenly spaced runs read better than a mostly empty time line.
    """
    figure = go.Figure(go.Scatter(
        x=run_labels(runs), y=[r.percent for r in runs],
        mode="lines+markers+text", text=[r.level or "—" for r in runs], textposition="top center",
        hovertext=[r.run_id for r in runs], name="score"))
    figure.update_layout(title="Score over past runs", height=300, yaxis={"range": [0, 105], "title": "% of points"},
                         margin={"t": 40, "b": 30})
    figure.update_xaxes(type="category", title="run", tickangle=0 if len(runs) <= 4 else -30)
    return figure


def scaling_figure(run: dict[str, Any]) -> go.Figure:
    """Measured throughput per replica count, the ideal line, the USL fit, and E(n) on a second axis."""
    steps = run.get("steps", [])
    ns = [s["replicas"] for s in steps]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=ns, y=[s["throughput"] for s in steps], mode="markers+lines", name="measured X(n)",
                                marker={"symbol": ["circle" if s.get("in_fit") else "x" for s in steps], "size": 10}))
    base = next((s["throughput"] for s in steps if s["replicas"] == 1), None)
    if base:
        figure.add_trace(go.Scatter(x=ns, y=[n * base for n in ns], mode="lines", name="linear n·X(1)",
                                    line={"dash": "dot"}))
    fit = run.get("fit")
    if fit and ns:
        grid = [1 + i * (max(ns) - 1) / 40 for i in range(41)] if max(ns) > 1 else [1]
        lam, sigma, kappa = fit["lam"], fit["sigma"], fit["kappa"]
        figure.add_trace(go.Scatter(x=grid, y=[lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1)) for n in grid],
                                    mode="lines", name=f"USL σ={sigma:.3f} κ={kappa:.4f}"))
    figure.add_trace(go.Bar(x=ns, y=[s.get("efficiency") for s in steps], name="E(n)", yaxis="y2", opacity=0.35))
    figure.update_layout(title="Scaling efficiency", height=340, xaxis={"title": "replicas", "dtick": 1},
                         yaxis={"title": "req/s"}, margin={"t": 40, "b": 30},
                         yaxis2={"title": "E(n)", "overlaying": "y", "side": "right", "range": [0, 1.2]})
    return figure


# ------------------------------------------------------------------------------------------- static report charts


def points_svg(card: Scorecard) -> str:
    earned = [sum(r.earned for r in card.results if r.rule.level == lv) for lv in LEVELS]
    possible = [sum(r.rule.points for r in card.results if r.rule.level == lv) for lv in LEVELS]
    ticks = list(enumerate(LEVELS))
    series = [svg_charts.Series("possible", [(i, v) for i, v in enumerate(possible)], "bar", "#d0d7de")]
    series += [svg_charts.Series("", [(i, v)], "bar", LEVEL_COLOURS[lv], bar_width=0.45)
               for i, (lv, v) in enumerate(zip(LEVELS, earned, strict=True))]
    series.append(svg_charts.Series("earned", [], "bar", "#8a8f98"))
    return svg_charts.chart("Points per level", series, x_range=(-0.6, len(LEVELS) - 0.4),
                            x_ticks=[(float(i), lv) for i, lv in ticks], y_title="points")


def trend_svg(runs: Sequence[RunSummary]) -> str:
    labels = run_labels(runs)
    series = [svg_charts.Series("score", [(float(i), r.percent) for i, r in enumerate(runs)], "lines+markers",
                                labels=[r.level or "—" for r in runs])]
    return svg_charts.chart("Score over past runs", series, x_range=(-0.5, max(len(runs) - 0.5, 0.5)),
                            x_ticks=[(float(i), label) for i, label in enumerate(labels)], y_title="% of points",
                            y_max=100.0, x_title="run")


def scaling_svg(run: dict[str, Any]) -> str:
    steps = run.get("steps", [])
    ns = [float(s["replicas"]) for s in steps]
    series = [svg_charts.Series("E(n)", [(n, s.get("efficiency")) for n, s in zip(ns, steps, strict=True)], "bar",
                                "#0969da", right_axis=True, opacity=0.3, bar_width=0.5)]
    series.append(svg_charts.Series("measured X(n)", [(n, s["throughput"]) for n, s in zip(ns, steps, strict=True)],
                                    "lines+markers", "#cf222e",
                                    hollow_markers=[not s.get("in_fit") for s in steps]))
    base = next((s["throughput"] for s in steps if s["replicas"] == 1), None)
    if base:
        series.append(svg_charts.Series("linear n·X(1)", [(n, n * base) for n in ns], "line", "#57606a", dash="4 3"))
    fit = run.get("fit")
    if fit and ns and max(ns) > 1:
        lam, sigma, kappa = fit["lam"], fit["sigma"], fit["kappa"]
        grid = [1 + i * (max(ns) - 1) / 40 for i in range(41)]
        series.append(svg_charts.Series(f"USL σ={sigma:.3f} κ={kappa:.4f}",
                                        [(n, lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))) for n in grid],
                                        "line", "#1a7f37"))
    low, high = (min(ns), max(ns)) if ns else (1.0, 2.0)
    return svg_charts.chart("Scaling efficiency", series, x_range=(low - 0.5, high + 0.5),
                            x_ticks=[(n, f"{n:g}") for n in ns], y_title="req/s", x_title="replicas",
                            y2_max=1.2, y2_title="E(n)")


# ------------------------------------------------------------------------------------------------------ HTML


def _status_badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="badge status-{html.escape(status)}" style="background:{colour}">{html.escape(status)}</span>'


def render_html(card: Scorecard, facts: Sequence[Fact], runs: Sequence[RunSummary] = (),
                scaling_run: dict[str, Any] | None = None, title: str = "fleetdeck readiness report") -> str:
    """One self-contained HTML document: level, score, the rules table with evidence, and the charts."""
    level = card.level or "none"
    rows = []
    for result in card.results:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.ts)) if result.ts else "—"
        evidence = html.escape(json.dumps(result.evidence, indent=2, sort_keys=True, default=str))
        rows.append(
            f"<tr><td>{html.escape(result.rule.level)}</td><td class='rule'><b>{html.escape(result.rule.title)}</b>"
            f"<div class='muted'>{html.escape(result.rule.measured_by)}</div></td>"
            f"<td>{_status_badge(result.status)}</td><td>{html.escape(result.observed)}</td>"
            f"<td>{result.earned:g}/{result.rule.points}</td><td>{when}</td>"
            f"<td class='evidence'><details><summary>evidence</summary><pre>{evidence}</pre></details></td></tr>")
    levels = " ".join(f"{html.escape(lv)} {_status_badge(card.level_status(lv))}" for lv in LEVELS)
    figures = [f'<div class="chart" id="fig-points">{points_svg(card)}</div>']
    if len(runs) > 0:
        figures.append(f'<div class="chart" id="fig-trend">{trend_svg(runs)}</div>')
    if scaling_run and scaling_run.get("steps"):
        figures.append(f'<div class="chart" id="fig-scaling">{scaling_svg(scaling_run)}</div>')
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    fact_rows = "".join(
        f"<tr><td>{html.escape(f.rule)}</td><td>{html.escape(f.target)}</td><td>{_status_badge(f.status)}</td>"
        f"<td>{html.escape(f.observed)}</td><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.ts))}</td></tr>"
        for f in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1f2328; }}
h1 {{ margin-bottom: 4px; }} .muted {{ color: #57606a; font-size: 12px; }}
.level {{ display: inline-block; padding: 6px 16px; border-radius: 16px; color: white; font-weight: 700;
          background: {LEVEL_COLOURS.get(card.level, "#6e7781")}; }}
.badge {{ display: inline-block; padding: 1px 8px; border-radius: 10px; color: white; font-size: 12px; }}
table {{ border-collapse: collapse; width: 100%; margin: 12px 0; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: 6px; text-align: left; vertical-align: top;
          overflow-wrap: break-word; }}
td.evidence {{ width: 34%; }} td.rule {{ min-width: 150px; }}
pre {{ white-space: pre-wrap; overflow-wrap: anywhere; font-size: 11px; margin: 4px 0; }}
.charts > div {{ margin-bottom: 12px; }}
@page {{ size: A4 landscape; margin: 12mm; }}
@media print {{ body {{ margin: 0; }} .charts > div, tr {{ break-inside: avoid; }} summary {{ display: none; }} }}
</style>
</head><body>
<h1>{html.escape(title)}</h1>
<div class="muted">run {html.escape(card.run_id)} · generated {html.escape(generated)}</div>
<p><span class="level" id="level-badge">{html.escape(level)}</span>
&nbsp; <b id="score">{card.percent:.0f}%</b> of points ({card.earned:g}/{card.total}) &nbsp; {levels}</p>
<h2>Rules</h2>
<table id="rules"><thead><tr><th>level</th><th>rule</th><th>status</th><th>observed</th><th>points</th>
<th>time</th><th>evidence</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h2>Charts</h2>
<div class="charts">{"".join(figures)}</div>
<h2>Facts of this run</h2>
<table id="facts"><thead><tr><th>rule</th><th>target</th><th>status</th><th>observed</th><th>time</th></tr></thead>
<tbody>{fact_rows}</tbody></table>
</body></html>
"""


# ------------------------------------------------------------------------------------------------------- PDF


class PdfError(RuntimeError):
    """Chromium could not print the report; the message carries its exit code and stderr tail."""


def print_pdf(html_text: str, pdf_path: str | os.PathLike[str], timeout_s: float = 60.0,
              chromium: str = CHROMIUM) -> Path:
    """Prints the HTML to `pdf_path` with headless Chromium; the browser is killed by its PID on timeout."""
    target = Path(pdf_path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetdeck-pdf-") as workdir:
        source = Path(workdir) / "report.html"
        source.write_text(printable(html_text), encoding="utf-8")
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={workdir}/profile", "--no-pdf-header-footer",
                   # lets Plotly draw before printing: virtual time runs the page's timers without real waiting
                   "--virtual-time-budget=10000", f"--print-to-pdf={target}", source.as_uri()]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   env={**os.environ, "HOME": workdir})
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the renderer children go with it
            process.communicate()
            raise PdfError(f"chromium did not print within {timeout_s:g}s") from None
        if process.returncode != 0 or not target.exists() or target.stat().st_size == 0:
            tail = stderr.decode(errors="replace")[-800:]
            raise PdfError(f"chromium exited {process.returncode} without a PDF: {tail}")
    return target


def printable(html_text: str) -> str:
    """The report as printed: every evidence block open (a closed <details> prints as a bare "evidence")."""
    return html_text.replace("<details>", "<details open>")


def pdf_bytes(html_text: str, timeout_s: float = 60.0) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fleetdeck-pdf-out-") as out:
        return print_pdf(html_text, Path(out) / "report.pdf", timeout_s).read_bytes()


# ------------------------------------------------------------------------------------------ live test-run charts


def run_timeline_figures(doc: dict[str, Any]) -> tuple[go.Figure, go.Figure]:
    """Throughput and p95 over a test run's timeline on a time axis (seconds since the start, every kind): the raw
    0.5 s points faint, a rolling mean over 2.5 s on top; scaling runs get one colour per replica count."""
    from actions.proving.load_tables import timeline_frame

    frame = timeline_frame(doc)
    throughput, latency = go.Figure(), go.Figure()
    if not frame.empty:
        keys = frame["replicas"].map(lambda r: "load" if r is None or r != r else f"{int(r)} replica(s)")
        for name in dict.fromkeys(keys):
            part = frame[keys == name]
            for figure, raw, smooth in ((throughput, "rps", "rps_smooth"), (latency, "p95_ms", "p95_smooth")):
                figure.add_trace(go.Scatter(x=part["seconds"], y=part[raw], mode="lines", name=f"{name} (0.5 s)",
                                            line={"width": 1}, opacity=0.35, showlegend=False))
                figure.add_trace(go.Scatter(x=part["seconds"], y=part[smooth], mode="lines", name=name,
                                            line={"width": 2.5}))
    throughput.update_layout(title="Throughput", height=280, yaxis_title="req/s", xaxis_title="seconds",
                             margin={"t": 40, "b": 30})
    latency.update_layout(title="p95 latency", height=280, yaxis_title="ms", xaxis_title="seconds",
                          margin={"t": 40, "b": 30})
    return throughput, latency


def instances_figure(doc: dict[str, Any]) -> go.Figure | None:
    """Responses per instance: the load result's, or one bar group per scaling step."""
    figure = go.Figure()
    steps = doc.get("steps") or []
    if steps:
        for step in steps:
            names = sorted(step.get("instances", {}))
            figure.add_trace(go.Bar(x=names, y=[step["instances"][n] for n in names],
                                    name=f"{step['replicas']} replica(s)"))
    else:
        result = doc.get("result") or {}
        instances = result.get("instances") or {}
        if not instances:
            return None
        names = sorted(instances)
        figure.add_trace(go.Bar(x=names, y=[instances[n] for n in names], name="responses"))
    figure.update_layout(title="Responses per instance", height=280, barmode="group", margin={"t": 40, "b": 30})
    return figure
