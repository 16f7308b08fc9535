"""What a finished load test says, as tables people know from Locust: per endpoint (requests, failures, RPS,
median, p95, p99, max), failures (outcome × count × example), and the CSV of both. Plus the live timeline on a
time axis with a smoothed line. Pure functions of a test-run document (actions/proving/testruns.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pandas as pd

ENDPOINT_COLUMNS = ["method", "endpoint", "requests", "failures", "failure_pct", "rps", "median_ms", "p95_ms",
                    "p99_ms", "max_ms"]
FAILURE_COLUMNS = ["outcome", "count", "example"]
# transport outcomes, in the words of the load generator's contract (docs/architecture.md)
TRANSPORT = {"connect": "could not connect", "timeout": "no answer within the timeout",
             "closed_on_reuse": "the server closed a reused keep-alive connection",
             "closed": "the server closed the connection", "reset": "connection reset",
             "protocol": "not a valid HTTP response", "cancelled": "in flight when the run was cancelled"}
SMOOTH_POINTS = 5  # rolling mean over 5 progress points (2.5 s): the raw 0.5 s rates are jagged


def endpoint_table(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per endpoint of the run (the generator drives one method + path per run)."""
    result = doc.get("result") or {}
    if not result.get("requests") and "url" not in result:
        return pd.DataFrame(columns=ENDPOINT_COLUMNS)
    requests = int(result.get("requests") or 0)
    failures = int(result.get("errors") or 0)
    latency = result.get("latency_ms") or {}
    url = str(result.get("url") or (doc.get("params") or {}).get("url") or "")
    parts = urlsplit(url)
    endpoint = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    row = {"method": str(result.get("method") or "GET"), "endpoint": endpoint[:200], "requests": requests,
           "failures": failures, "failure_pct": 100.0 * failures / requests if requests else 0.0,
           "rps": float(result.get("rps") or 0.0), "median_ms": latency.get("p50"), "p95_ms": latency.get("p95"),
           "p99_ms": latency.get("p99"), "max_ms": latency.get("max")}
    return pd.DataFrame([row], columns=ENDPOINT_COLUMNS)


def failures_table(doc: dict[str, Any]) -> pd.DataFrame:
    """Every failing outcome with its count: HTTP statuses ≥ 400 and transport errors; the example is what the
    generator last saw for that kind (transport), or the status line meaning."""
    result = doc.get("result") or {}
    rows = []
    for status, count in sorted((result.get("status_counts") or {}).items()):
        if str(status).isdigit() and int(status) >= 400 and int(count) > 0:
            rows.append({"outcome": f"HTTP {status}", "count": int(count),
                         "example": f"{result.get('method', 'GET')} {urlsplit(str(result.get('url', ''))).path} "
                                    f"answered {status}"})
    last_error = str(result.get("last_error") or "")[:300]
    for kind, count in sorted((result.get("errors_by_kind") or {}).items()):
        if kind.startswith("http_") or int(count) <= 0:
            continue
        example = last_error if last_error and kind in last_error else TRANSPORT.get(kind, kind)
        rows.append({"outcome": kind, "count": int(count), "example": example})
    if int(result.get("cancelled") or 0):
        rows.append({"outcome": "cancelled", "count": int(result["cancelled"]), "example": TRANSPORT["cancelled"]})
    frame = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    return frame.sort_values("count", ascending=False).reset_index(drop=True) if not frame.empty else frame


def stats_csv(doc: dict[str, Any]) -> bytes:
    """The endpoint row and the failures in one CSV (Locust's stats + failures), for a spreadsheet."""
    endpoints = endpoint_table(doc)
    failures = failures_table(doc)
    text = endpoints.to_csv(index=False)
    if not failures.empty:
        text += "\n" + failures.to_csv(index=False)
    return text.encode()


def timeline_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """The progress points on a time axis (seconds since the start, for every test kind) with smoothed columns;
    a scaling run's points restart their clock at each step, so elapsed time is made cumulative."""
    points = doc.get("timeline") or []
    rows = []
    offset = 0.0
    previous = None
    for point in points:
        elapsed = float(point.get("elapsed_s") or 0.0)
        if previous is not None and elapsed + offset < previous:
            offset = previous  # a new step's clock started again at 0
        seconds = elapsed + offset
        previous = seconds
        rows.append({"seconds": seconds, "rps": float(point.get("rps") or 0.0),
                     "p95_ms": float(point.get("p95_ms") or 0.0),
                     "replicas": point.get("replicas")})
    frame = pd.DataFrame(rows, columns=["seconds", "rps", "p95_ms", "replicas"])
    if not frame.empty:
        frame["rps_smooth"] = frame["rps"].rolling(SMOOTH_POINTS, min_periods=1).mean()
        frame["p95_smooth"] = frame["p95_ms"].rolling(SMOOTH_POINTS, min_periods=1).mean()
    return frame
