"""The Alerts page's data: which rule fires for which subject, since when, its message and where its chart is;
and the alerts that fired and resolved within the range. No Streamlit here.

Alert samples are written by collectors/alerts.py: target `<rule>/<subject>`, metric `firing` (1/0), text = the
message while firing. A rule with `for:` (docs/alerts.md) is pending first: `firing` 0 with the text
"pending since <unix s>: <message>" (collectors/alerts.py), listed here as pending with that since.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

import pandas as pd

from dashboard.fleet_state import FleetState
from dashboard.queries import DEFAULT_STALE_AFTER_S, current, latest_by_target
from dashboard.ranges import Window

if TYPE_CHECKING:
    from core.store import StoreView

# how far back "since" is looked for: an alert firing for longer says "before <that>"
SINCE_LOOKBACK_S = 24 * 3600
HISTORY_POINTS = 1500

# rule → (page url path, query parameter naming the subject); target_down is decided by its subject's source
RULE_PAGES: dict[str, tuple[str, str | None]] = {
    "instance_down": ("instances", "instance"),
    "queue_no_workers": ("queues", "queue"),
    "backlog_growing": ("queues", "queue"),
    "failure_ratio": ("queues", "queue"),
    "redis_eviction_policy": ("redis", None),
    "redis_evicting": ("redis", None),
    "db_headroom": ("database", None),
    "lock_waiters": ("database", None),
}
TARGET_PAGES = {"nginx": "load_balancer", "redis": "redis", "postgres": "database", "bullmq": "queues"}
ACTIVE_COLUMNS = ["rule", "subject", "state", "since", "for_s", "message", "chart"]
PENDING_PREFIX = "pending since "  # as written by collectors/alerts.py
RESOLVED_COLUMNS = ["rule", "subject", "fired", "resolved", "lasted_s", "chart"]


class AlertKey(NamedTuple):
    rule: str
    subject: str


def split_target(target: str) -> AlertKey:
    rule, _, subject = target.partition("/")
    return AlertKey(rule, subject)


def chart_link(rule: str, subject: str) -> str:
    """A relative link to the page charting the alert's subject, with the subject selected (st.query_params)."""
    page, param = RULE_PAGES.get(rule, ("", None))
    if rule == "target_down":
        page = TARGET_PAGES.get(subject.partition(":")[0], "")
    if not page:
        return "./"
    return f"./{page}" + (f"?{urlencode({param: subject})}" if param else "")


def _runs(ts: list[float], vmax: list[float], vmin: list[float]) -> list[tuple[float, float | None, bool]]:
    """(first ts firing, first ts not firing after it or None while still firing, whole run seen)."""
    runs: list[tuple[float, float | None, bool]] = []
    start: float | None = None
    for moment, high, low in zip(ts, vmax, vmin, strict=True):
        if high >= 1 and start is None:
            start = moment
        elif low < 1 and high < 1 and start is not None:
            runs.append((start, moment, True))
            start = None
    if start is not None:
        runs.append((start, None, True))
    return runs


def _run_start(store: StoreView, series_id: int, start: float, end: float) -> float | None:
    columns = store.query_columns([series_id], start, end, max_points=HISTORY_POINTS).get(series_id)
    if columns is None or not len(columns.ts):
        return None
    runs = _runs(list(columns.ts), list(columns.vmax), list(columns.vmin))
    return runs[-1][0] if runs and runs[-1][1] is None else None


def firing_since(store: StoreView, series_id: int, now: float) -> float | None:
    """The start of the current firing run: a coarse pass over a day (buckets of ~1 min), then a fine pass from
    one coarse bucket before that start (buckets of a few seconds for a run of minutes)."""
    coarse = _run_start(store, series_id, now - SINCE_LOOKBACK_S, now)
    if coarse is None:
        return None
    coarse_step = SINCE_LOOKBACK_S / HISTORY_POINTS
    fine = _run_start(store, series_id, coarse - 2 * coarse_step, now)
    return fine if fine is not None and fine >= coarse - coarse_step else coarse


def active_alerts(store: StoreView, now: float, state: FleetState | None = None,
                  stale_after_s: float = DEFAULT_STALE_AFTER_S) -> pd.DataFrame:
    """Alerts firing now, then pending ones (evaluated recently, subject not removed by an action), oldest first."""
    latest = current(latest_by_target(store, "alert", metric="firing"), stale_after_s)
    firing = {t: m["firing"] for t, m in latest.items()
              if "firing" in m and m["firing"].value >= 1
              and (state is None or state.live(split_target(t).subject))}
    rows = []
    if firing:
        infos = {i.target: i for i in store.find_series(source="alert", metric="firing") if i.target in firing}
        for target, row in firing.items():
            key = split_target(target)
            info = infos.get(target)
            since = row.ts if info is None else firing_since(store, info.id, now) or row.ts
            rows.append({"rule": key.rule, "subject": key.subject, "state": "firing", "since": since,
                         "for_s": max(0.0, now - since), "message": (row.text or "")[:500],
                         "chart": chart_link(key.rule, key.subject)})
    for target, metrics in latest.items():
        maybe = metrics.get("firing")
        key = split_target(target)
        text = (maybe.text or "") if maybe is not None else ""
        if maybe is None or maybe.value >= 1 or not text.startswith(PENDING_PREFIX):
            continue
        if state is not None and not state.live(key.subject):
            continue
        stamp, _, message = text[len(PENDING_PREFIX):].partition(": ")
        try:
            since = float(stamp)
        except ValueError:
            since = maybe.ts
        rows.append({"rule": key.rule, "subject": key.subject, "state": "pending", "since": since,
                     "for_s": max(0.0, now - since), "message": message[:500],
                     "chart": chart_link(key.rule, key.subject)})
    frame = pd.DataFrame(rows, columns=ACTIVE_COLUMNS)
    return (frame.sort_values(["state", "since", "rule", "subject"]).reset_index(drop=True)
            if not frame.empty else frame)


def resolved_alerts(store: StoreView, window: Window) -> pd.DataFrame:
    """Every firing → resolved run within the window, newest first (the message of a resolved run is not kept:
    the store keeps the text of a series' latest sample only)."""
    infos = store.find_series(source="alert", metric="firing")
    rows = []
    if infos:
        history = store.query_columns([i.id for i in infos], window.start, window.end, max_points=HISTORY_POINTS)
        for info in infos:
            columns = history.get(info.id)
            if columns is None or not len(columns.ts):
                continue
            key = split_target(info.target)
            for fired, resolved, _whole in _runs(list(columns.ts), list(columns.vmax), list(columns.vmin)):
                if resolved is None:
                    continue
                rows.append({"rule": key.rule, "subject": key.subject, "fired": fired, "resolved": resolved,
                             "lasted_s": resolved - fired, "chart": chart_link(key.rule, key.subject)})
    frame = pd.DataFrame(rows, columns=RESOLVED_COLUMNS)
    return frame.sort_values("resolved", ascending=False).reset_index(drop=True) if not frame.empty else frame
