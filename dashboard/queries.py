"""What each page shows, computed from the Store: tiles, tables and chart traces. No Streamlit here.

Every function takes the store and explicit times so tests can seed a store and assert the numbers.
Metric names follow docs/architecture.md ("Metric names the dashboard reads").

The Database and Redis pages' queries are in dashboard/datastore_queries.py, on the basics defined here.

Size (~590 lines, above the ~500 the codebase aims for): the shared basics (fetch, latest values, tiles, charts)
and one group of functions per fleet page (overview, instances, load balancer, queues), addressed as
`queries.*` by the pages and the tests.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from collectors import catalogue
from dashboard.fleet_state import NOT_ANSWERING, FleetState, ServiceCount
from dashboard.ranges import Window
from dashboard.series import Trace, count_traces, sum_traces, trace_from_columns

if TYPE_CHECKING:
    from core.store import Event, Latest, SeriesInfo, StoreView, TargetStatus

# what the store is asked for per trace: about one point per horizontal pixel of a half-width chart (the
# figures cap at 2,000 anyway); more only grows the browser payload
CHART_POINTS = 400
SPARKLINE_POINTS = 40
# a target whose newest sample is older than this is shown as stale rather than as its last value
DEFAULT_STALE_AFTER_S = 60.0

HEALTH_WORDS = {0: "pass", 1: "warn", 2: "fail", 3: "draining"}
SERVER_STATE_WORDS = {0: "up", 1: "draining", 2: "down"}
QUEUE_STATES = ("waiting", "active", "delayed", "prioritized", "waiting_children", "completed", "failed")
BACKLOG_STATES = ("waiting", "active", "delayed", "prioritized", "waiting_children")


class Tile(NamedTuple):
    label: str
    value: str  # formatted for st.metric
    raw: float | None  # the number behind it (None: no data), for tests and thresholds
    help: str
    bad: bool = False  # the page colours it / adds a warning
    note: str | None = None  # the short red line under a bad tile (default "needs attention")


@dataclass
class Chart:
    """A time chart the page hands to figures.time_chart."""

    title: str
    unit: str
    traces: list[Trace]
    stacked: bool = False
    reference_lines: dict[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(len(t) for t in self.traces)


# ---------------------------------------------------------------------------------------------------- basics


def is_server_target(target: str) -> bool:
    """nginx per-upstream-server targets are `nginx:<lb>/<host:port>`; totals are `nginx:<lb>`."""
    return "/" in target


def latest_by_target(store: StoreView, source: str, metric: str | None = None) -> dict[str, dict[str, Latest]]:
    """target → metric → newest value, for series without labels (labelled ones: `labelled_latest`)."""
    table: dict[str, dict[str, Latest]] = defaultdict(dict)
    for row in store.latest(source=source, metric=None if metric is None else catalogue.metric(source, metric)):
        if not row.series.labels:
            table[row.series.target][row.series.metric] = row
    return dict(table)


def labelled_latest(store: StoreView, source: str, metric: str, target: str | None = None) -> list[Latest]:
    """The labelled series of the newest scrape only: a label set that vanished (an app that disconnected)
    keeps its last row in the store forever, so rows older than the newest one by more than 1 s are dropped."""
    rows = [r for r in store.latest(source=source, metric=catalogue.metric(source, metric), target=target)
            if r.series.labels]
    if not rows:
        return []
    newest = max(r.ts for r in rows)
    return [r for r in rows if r.ts >= newest - 1.0]


def value_of(metrics: dict[str, Latest], metric: str) -> float | None:
    row = metrics.get(metric)
    return None if row is None else float(row.value)


def text_of(metrics: dict[str, Latest], metric: str) -> str | None:
    row = metrics.get(metric)
    return None if row is None else row.text


def newest_ts(metrics: dict[str, Latest]) -> float | None:
    return max((r.ts for r in metrics.values()), default=None)


def source_newest_ts(store: StoreView, source: str) -> float | None:
    """When a source last answered: the freshness caption of a panel (a failed scrape brings no new data)."""
    return max((s.last_ok_ts for s in store.target_statuses(source=source) if s.last_ok_ts is not None), default=None)


def unreachable(store: StoreView, source: str, targets: Iterable[str] | None = None,
                state: FleetState | None = None) -> list[TargetStatus]:
    """Targets whose last collection failed (up=0), with the error and the last success; replicas an action
    removed (`state.removed`) are not unreachable, they are gone."""
    wanted = set(targets) if targets is not None else None
    return [
        status
        for status in store.target_statuses(source=source)
        if not status.up and (wanted is None or status.target in wanted)
        and (state is None or state.live(status.target))
    ]


def fetch(
    store: StoreView,
    window: Window,
    source: str,
    metric: str,
    *,
    keep: Callable[[SeriesInfo], bool] | None = None,
    name: Callable[[SeriesInfo], str] | None = None,
    max_points: int = CHART_POINTS,
    rate: bool = False,
) -> list[Trace]:
    """All series of one metric in one query (the store buckets in SQL, min/max kept), one trace each.

    `rate=True` is for raw counters (`*_total`, xact_commit, evicted_keys): the store differences them in SQL
    and treats a drop as a counter reset.
    """
    infos = [info for info in store.find_series(source=source, metric=catalogue.metric(source, metric))
             if keep is None or keep(info)]
    if not infos:
        return []
    # columns, not Points: thousands of per-point objects per chart used to set off full GC passes (store.py)
    columns = store.query_columns([i.id for i in infos], window.start, window.end, max_points=max_points, rate=rate)
    label = name or (lambda info: info.target)
    traces = [trace_from_columns(label(info), columns[info.id]) for info in infos if info.id in columns]
    return sorted((t for t in traces if len(t)), key=lambda t: t.name)


def counted(name: str, traces: Sequence[Trace], window: Window, buckets: int = CHART_POINTS // 2) -> list[Trace]:
    """How many 0/1 series are 1 per time cell: whole numbers (a series firing at any moment of a cell counts
    once), so "alerts firing" never reads 0.25, and its last cell agrees with the tile."""
    return [count_traces(name, traces, window.start, window.end, buckets)] if any(len(t) for t in traces) else []


def summed(name: str, traces: Sequence[Trace], window: Window, buckets: int = CHART_POINTS // 2) -> list[Trace]:
    total = sum_traces(name, traces, window.start, window.end, buckets)
    return [total] if len(total) else []


def events_in(store: StoreView, window: Window) -> list[Event]:
    """Audit-log and annotation events of the window: the markers every time chart carries (an action's outcome,
    replica start/stop/dead; the step-by-step progress of actions is kept apart, see actions/audit.py)."""
    return store.events(window.start, window.end)


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def current(rows: dict[str, dict[str, Latest]], stale_after_s: float) -> dict[str, dict[str, Latest]]:
    """Targets still being collected: sampled within `stale_after_s` of the source's newest sample.

    A replica scaled away long ago must count neither as up nor as down. The reference is the source's newest
    sample, not the clock: when the whole collector stalls, the tiles keep the last known picture (and the
    freshness caption turns into a "stalled" warning) instead of going blank.
    """
    reference = max((newest_ts(m) or 0 for m in rows.values()), default=0)
    return {t: m for t, m in rows.items() if (newest_ts(m) or 0) >= reference - stale_after_s}


def newest_of(rows: dict[str, dict[str, Latest]]) -> float:
    return max((newest_ts(m) or 0 for m in rows.values()), default=0)


# -------------------------------------------------------------------------------------------------- overview


def overview_tiles(store: StoreView, stale_after_s: float = DEFAULT_STALE_AFTER_S, state: FleetState | None = None,
                   counts: Sequence[ServiceCount] = ()) -> list[Tile]:
    instances = current(latest_by_target(store, "instance"), stale_after_s)
    if state is not None:
        instances = {t: m for t, m in instances.items() if state.live(t)}
    up_count = sum(1 for m in instances.values() if (value_of(m, "up") or 0) >= 1)
    total = len(instances)
    if counts:
        # desired vs running vs dead from the registry: a dead replica is not silently "one fewer instance"
        desired = sum(c.desired for c in counts)
        running = sum(c.running for c in counts) + sum(1 for t, m in instances.items()
                                                         if t.startswith("static/") and (value_of(m, "up") or 0) >= 1)
        dead = sum(c.dead for c in counts)
        # the value stays short (a st.metric cuts what does not fit a quarter of the page); the dead count is the
        # red line under it
        instances_tile = Tile("Instances running", f"{running} / {desired}", float(running),
                              "replicas answering their health check / the desired count (last scale, else the "
                              "config); dead: the process is gone or does not answer",
                              bad=running < desired or dead > 0,
                              note=f"{dead} dead" if dead else ("below desired" if running < desired else None))
    else:
        instances_tile = Tile("Instances", f"{up_count} / {total} up" if total else "—",
                              float(up_count) if total else None,
                              "instances that answered their health endpoint / instances seen recently; a failing"
                              " check (often a dependency's) is named in the outage line above, not counted here",
                              bad=up_count < total)

    nginx = current(latest_by_target(store, "nginx"), stale_after_s)
    totals = {t: m for t, m in nginx.items() if not is_server_target(t)}
    servers = {t: m for t, m in nginx.items() if is_server_target(t)}
    rps_values = [v for m in totals.values() if (v := value_of(m, "requests_per_s")) is not None]
    rps = sum(rps_values) if rps_values else None
    err_values = [v for m in servers.values() if (v := value_of(m, "status_5xx_per_s")) is not None]
    errors = sum(err_values) if err_values else None
    p95_values = [v for m in servers.values() if (v := value_of(m, "upstream_p95_ms")) is not None]
    p95 = max(p95_values) if p95_values else None

    queues = current(latest_by_target(store, "bullmq"), stale_after_s)
    waiting_values = [v for m in queues.values() if (v := value_of(m, "waiting")) is not None]
    backlog = sum(waiting_values) if waiting_values else None
    failed_values = [v for m in queues.values() if (v := value_of(m, "failed_per_s")) is not None]
    failed_per_min = sum(failed_values) * 60 if failed_values else None

    postgres = current(latest_by_target(store, "postgres"), stale_after_s)
    used_values = [v for m in postgres.values() if (v := value_of(m, "connections_total")) is not None]
    budget_values = [v for m in postgres.values() if (v := value_of(m, "connection_budget")) is not None]
    used = sum(used_values) if used_values else None
    budget = sum(budget_values) if budget_values else None

    firing = len(firing_alerts(store, stale_after_s, state))

    error_share = (errors / rps) if errors is not None and rps else None
    return [
        instances_tile,
        Tile("Requests/s", fmt(rps, ".1f"), rps, "nginx: requests per second (all load balancers)"),
        Tile("5xx/s", fmt(errors, ".2f") + (f" ({error_share:.1%})" if error_share is not None else ""), errors,
             "upstream responses with status 5xx per second, and their share of requests", bad=bool(errors)),
        Tile("p95 latency", fmt(p95, ".0f", " ms"), p95, "worst upstream server's p95 response time (nginx)"),
        Tile("Queue backlog", fmt(backlog, ".0f"), backlog, "waiting jobs over every BullMQ queue"),
        Tile("Failed jobs/min", fmt(failed_per_min, ".1f"), failed_per_min, "BullMQ failures per minute",
             bad=bool(failed_per_min)),
        Tile("Postgres connections", f"{used:.0f} / {budget:.0f}" if used is not None and budget else fmt(used, ".0f"),
             used, "client connections in use / the fleet's connection budget",
             bad=used is not None and bool(budget) and used >= (budget or 0)),
        Tile("Active alerts", str(firing), float(firing), "alert rules firing now", bad=firing > 0),
    ]


def overview_charts(store: StoreView, window: Window) -> list[Chart]:
    up = fetch(store, window, "instance", "up")
    nginx_rps = fetch(store, window, "nginx", "requests_per_s", keep=lambda i: not is_server_target(i.target))
    server_5xx = fetch(store, window, "nginx", "status_5xx_per_s", keep=lambda i: is_server_target(i.target))
    server_p95 = fetch(store, window, "nginx", "upstream_p95_ms", keep=lambda i: is_server_target(i.target))
    waiting = fetch(store, window, "bullmq", "waiting")
    failed = fetch(store, window, "bullmq", "failed_per_s")
    pg_used = fetch(store, window, "postgres", "connections_total")
    budgets = [v for m in latest_by_target(store, "postgres", "connection_budget").values()
               if (v := value_of(m, "connection_budget"))]
    alerts = fetch(store, window, "alert", "firing")
    failed_per_min = [Trace(t.name, t.ts, t.value * 60, t.vmin * 60, t.vmax * 60) for t in failed]
    return [
        Chart("Instances up", "instances", summed("up", up, window)),
        Chart("Requests/s", "1/s", nginx_rps),
        Chart("5xx/s", "1/s", summed("5xx", server_5xx, window)),
        Chart("p95 latency per upstream server", "ms", server_p95),
        Chart("Queue backlog (waiting)", "jobs", waiting, stacked=True),
        Chart("Failed jobs/min", "1/min", summed("failed", failed_per_min, window)),
        Chart("Postgres connections", "connections", pg_used,
              reference_lines={"budget": sum(budgets)} if budgets else {}),
        Chart("Alerts firing", "alerts", counted("firing", alerts, window)),
    ]


def firing_alerts(store: StoreView, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                  state: FleetState | None = None) -> dict[str, Latest]:
    """`<rule>/<subject>` → its latest `firing` row, for the alerts firing now: evaluated recently, and not about
    a replica an action removed (that is not an outage)."""
    alerts = current(latest_by_target(store, "alert", metric="firing"), stale_after_s)
    out = {}
    for target, metrics in alerts.items():
        row = metrics.get("firing")
        if row is None or row.value < 1:
            continue
        subject = target.split("/", 1)[1] if "/" in target else target
        if state is not None and not state.live(subject):
            continue
        out[target] = row
    return out


# ------------------------------------------------------------------------------------------------- instances


def instance_status(metrics: dict[str, Latest], reference_ts: float, stale_after_s: float,
                    registry_state: str | None = None) -> str:
    """UP / WARN / DRAINING / FAIL / DOWN / STALE — the word the status column and the badges show.

    STALE: not scraped within `stale_after_s` of `reference_ts`, the newest scrape of any instance (a replica
    the collector stopped watching, e.g. removed from the registry while its process lives on).
    """
    if registry_state == "dead":
        return "DOWN"  # the backend saw the process gone: no need to wait for the next poll to fail
    up = metrics.get("up")
    if up is None:
        return "UNKNOWN"
    if up.ts < reference_ts - stale_after_s:
        return "STALE"
    if up.value < 1:
        return "DOWN"
    health = value_of(metrics, "health_status")
    if health is not None and up.ts - metrics["health_status"].ts < stale_after_s:
        return {1: "WARN", 2: "FAIL", 3: "DRAINING"}.get(int(health), "UP")
    return "UP"


BAD_STATUSES = frozenset({"DOWN", "FAIL", "STALE", "UNKNOWN"})

INSTANCE_COLUMNS = [
    "instance", "status", "rotation", "health", "latency_ms", "memory_mb", "cpu_percent", "loop_lag_ms", "in_flight",
    "pool_total", "pool_idle", "pool_waiting", "version", "uptime_min", "last_scraped_s",
    # PM2-managed instances only (collectors/pm2.py): PM2's own word, restarts and unstable restarts
    "pm2_status", "restarts", "unstable_restarts",
]


def instances_table(store: StoreView, now: float, window: Window, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                    state: FleetState | None = None) -> pd.DataFrame:
    """One row per instance seen within the window and not removed by an action, worst status first."""
    rows: list[dict[str, Any]] = []
    instances = latest_by_target(store, "instance")
    reference = newest_of(instances)
    state = state or FleetState()
    for target, metrics in instances.items():
        newest = newest_ts(metrics) or 0
        if newest < window.start or not state.live(target):
            continue
        memory = value_of(metrics, "memory_rss_bytes")
        lag = value_of(metrics, "event_loop_lag_s")
        uptime = value_of(metrics, "uptime_s")
        up_row = metrics.get("up")
        health = value_of(metrics, "health_status")
        registry_state = state.registry.get(target)
        status = instance_status(metrics, reference, stale_after_s, registry_state)
        health_word = text_of(metrics, "health_status") or (HEALTH_WORDS.get(int(health)) if health is not None
                                                            else None)
        rows.append({
            "instance": target,
            "status": status,
            "rotation": state.rotation.get(target),
            # the last /health answer predates the failure: "pass" next to DOWN would contradict the status
            "health": ("process gone" if registry_state == "dead" else "no answer") if status == "DOWN"
            else _with_failing_checks(health_word, metrics),
            "latency_ms": value_of(metrics, "latency_ms"),
            "memory_mb": None if memory is None else memory / 1e6,
            "cpu_percent": value_of(metrics, "cpu_percent"),
            "loop_lag_ms": None if lag is None else lag * 1000,
            "in_flight": value_of(metrics, "in_flight"),
            "pool_total": value_of(metrics, "pool_total"),
            "pool_idle": value_of(metrics, "pool_idle"),
            "pool_waiting": value_of(metrics, "pool_waiting"),
            "version": text_of(metrics, "version"),
            "uptime_min": None if uptime is None else uptime / 60,
            "last_scraped_s": None if up_row is None else max(0.0, now - up_row.ts),
            "pm2_status": text_of(metrics, "pm2_status"),
            "restarts": value_of(metrics, "pm2_restarts"),
            "unstable_restarts": value_of(metrics, "pm2_unstable_restarts"),
        })
    frame = pd.DataFrame(rows, columns=INSTANCE_COLUMNS)
    if not frame.empty:
        frame["_bad"] = frame["status"].isin(BAD_STATUSES)
        frame = frame.sort_values(["_bad", "instance"], ascending=[False, True]).drop(columns="_bad")
        frame = frame.reset_index(drop=True)
    return frame


def _with_failing_checks(word: str | None, metrics: dict[str, Latest]) -> str | None:
    """"warn: redis:responseTime" — which check fails tells a dependency outage from an instance outage."""
    failing = metrics.get("failing_checks")
    if word and failing is not None and failing.value > 0 and failing.text:
        return f"{word}: {failing.text[:120]}"
    return word


@dataclass
class InstanceDetail:
    target: str
    status: str
    last_ts: float | None  # when it was last scraped (successfully or not)
    health_json: Any  # parsed /health body, or the raw text when it is not JSON, or None
    error: str | None  # the last collection error (text of the up=0 sample)
    last_ok_ts: float | None
    events: list[Event]
    charts: list[Chart]
    rotation: str | None = None  # in rotation | draining | out (None: not behind a load balancer we read)


def instance_detail(store: StoreView, target: str, window: Window,
                    stale_after_s: float = DEFAULT_STALE_AFTER_S, state: FleetState | None = None) -> InstanceDetail:
    instances = latest_by_target(store, "instance")
    metrics = instances.get(target, {})
    raw = text_of(metrics, "health_raw")
    try:
        health_json: Any = json.loads(raw) if raw else None
    except ValueError:
        health_json = raw
    status = next((s for s in store.target_statuses(source="instance") if s.target == target), None)

    def only(info: SeriesInfo) -> bool:
        return info.target == target

    def one(metric: str, label: str | None = None, scale: float = 1.0, rate: bool = False) -> list[Trace]:
        traces = fetch(store, window, "instance", metric, keep=only, name=lambda _i: label or metric, rate=rate)
        return [Trace(t.name, t.ts, t.value * scale, t.vmin * scale, t.vmax * scale) for t in traces]

    pool = [t for m in ("pool_total", "pool_idle", "pool_waiting") for t in one(m, m.removeprefix("pool_"))]
    requests = one("requests_total", "requests/s", rate=True)
    errors = one("requests_5xx_total", "5xx/s", rate=True)
    charts = [
        Chart("Health-check latency", "ms", one("latency_ms")),
        Chart("Memory (RSS)", "MB", one("memory_rss_bytes", "rss", 1e-6)),
        Chart("CPU", "%", one("cpu_percent", "cpu")),
        Chart("Event-loop lag", "ms", one("event_loop_lag_s", "lag", 1000.0)),
        Chart("In-flight requests", "requests", one("in_flight")),
        Chart("DB pool", "connections", pool),
        Chart("Requests", "1/s", requests + errors),
    ]
    events = [e for e in events_in(store, window) if e.target in (target, target.split("/")[-1])]
    return InstanceDetail(
        target=target,
        status=(instance_status(metrics, newest_of(instances), stale_after_s,
                                (state or FleetState()).registry.get(target)) if metrics else "UNKNOWN"),
        last_ts=metrics["up"].ts if "up" in metrics else None,
        health_json=health_json,
        error=(status.error or text_of(metrics, "up") or "no answer") if status and not status.up else None,
        last_ok_ts=status.last_ok_ts if status else None,
        events=events,
        charts=charts,
        rotation=(state or FleetState()).rotation.get(target),
    )


# ---------------------------------------------------------------------------------------------- load balancer

SERVER_COLUMNS = ["load_balancer", "server", "state", "requests_per_s", "status_4xx_per_s", "status_5xx_per_s",
                  "p50_ms", "p95_ms", "failed_attempts", "last_seen_s"]


def lb_servers_table(store: StoreView, now: float, window: Window, state: FleetState | None = None) -> pd.DataFrame:
    """One row per upstream server; `state` (the replicas' liveness) turns nginx's `up` for a replica that does not
    answer into "up, not answering": nginx's file lists it until an action removes it."""
    silent = {(state.addresses.get(t) or "") for t, word in state.rotation.items() if word == NOT_ANSWERING} \
        if state else set()
    rows: list[dict[str, Any]] = []
    for target, metrics in latest_by_target(store, "nginx").items():
        if not is_server_target(target) or (newest_ts(metrics) or 0) < window.start:
            continue
        lb, server = target.split("/", 1)
        state_value = value_of(metrics, "server_state")
        word = (text_of(metrics, "server_state")
                or (SERVER_STATE_WORDS.get(int(state_value), "?") if state_value is not None else None))
        rows.append({
            "load_balancer": lb,
            "server": server,
            "state": f"{word}, not answering" if word == "up" and server in silent else word,
            "requests_per_s": value_of(metrics, "requests_per_s"),
            "status_4xx_per_s": value_of(metrics, "status_4xx_per_s"),
            "status_5xx_per_s": value_of(metrics, "status_5xx_per_s"),
            "p50_ms": value_of(metrics, "upstream_p50_ms"),
            "p95_ms": value_of(metrics, "upstream_p95_ms"),
            "failed_attempts": value_of(metrics, "failed_attempts"),
            "last_seen_s": max(0.0, now - (newest_ts(metrics) or now)),
        })
    return pd.DataFrame(rows, columns=SERVER_COLUMNS).sort_values(["load_balancer", "server"]).reset_index(drop=True)


NGINX_TOTALS = ("requests_per_s", "active", "reading", "writing", "waiting", "accepts", "handled", "requests_total")


def lb_totals(store: StoreView) -> dict[str, dict[str, float | None]]:
    """nginx:<lb> → stub_status totals."""
    return {
        target: {metric: value_of(metrics, metric) for metric in NGINX_TOTALS}
        for target, metrics in sorted(latest_by_target(store, "nginx").items())
        if not is_server_target(target)
    }


def lb_charts(store: StoreView, window: Window) -> list[Chart]:
    def servers(info: SeriesInfo) -> bool:
        return is_server_target(info.target)

    def short(info: SeriesInfo) -> str:
        return info.target.split("/", 1)[1]

    return [
        Chart("Requests/s per upstream server", "1/s",
              fetch(store, window, "nginx", "requests_per_s", keep=servers, name=short), stacked=True),
        Chart("5xx/s per upstream server", "1/s", fetch(store, window, "nginx", "status_5xx_per_s", keep=servers,
                                                         name=short)),
        Chart("p95 per upstream server", "ms", fetch(store, window, "nginx", "upstream_p95_ms", keep=servers,
                                                      name=short)),
        Chart("nginx active connections", "connections",
              fetch(store, window, "nginx", "active", keep=lambda i: not servers(i))),
    ]


# ---------------------------------------------------------------------------------------------------- queues


def queues_table(store: StoreView, window: Window) -> pd.DataFrame:
    """queue × state: the current count and a sparkline of the window (lists for LineChartColumn)."""
    latest = {t: m for t, m in latest_by_target(store, "bullmq").items() if "waiting" in m}
    rows: list[dict[str, Any]] = []
    trend_span = 0.0
    if latest:
        infos = [i for i in store.find_series(source="bullmq") if i.metric in QUEUE_STATES and i.target in latest]
        points = store.query([i.id for i in infos], window.start, window.end, max_points=SPARKLINE_POINTS)
        history = {(i.target, i.metric): [p.value for p in points.get(i.id, [])] for i in infos}
        stamps = [p.ts for series in points.values() for p in series]
        trend_span = (max(stamps) - min(stamps)) if stamps else 0.0
        for target in sorted(latest):
            metrics = latest[target]
            for state in QUEUE_STATES:
                if state in metrics:
                    rows.append({
                        "queue": target, "state": state, "count": value_of(metrics, state),
                        "trend": history.get((target, state), []),
                    })
    frame = pd.DataFrame(rows, columns=["queue", "state", "count", "trend"])
    # a sparkline stretches its points over the column: the label must name the span the points cover
    frame.attrs["trend_span_s"] = trend_span if rows else 0.0
    return frame


class QueueWorkers(NamedTuple):
    queue: str
    workers: int
    waiting: int
    paused: bool
    oldest_waiting_age_s: float | None

    @property
    def starving(self) -> bool:
        """Jobs wait on a running queue that nobody consumes: the alert nobody else ships."""
        return self.workers == 0 and self.waiting > 0 and not self.paused


def queue_workers(store: StoreView) -> list[QueueWorkers]:
    result = []
    for target, metrics in sorted(latest_by_target(store, "bullmq").items()):
        if "workers" not in metrics and "waiting" not in metrics:
            continue  # the Redis-level target of the bullmq collector (up/latency only)
        result.append(QueueWorkers(
            queue=target,
            workers=int(value_of(metrics, "workers") or 0),
            waiting=int(value_of(metrics, "waiting") or 0),
            paused=bool(value_of(metrics, "paused")),
            oldest_waiting_age_s=value_of(metrics, "oldest_waiting_age_s"),
        ))
    return result


def queue_charts(store: StoreView, window: Window, queue: str) -> list[Chart]:
    def only(info: SeriesInfo) -> bool:
        return info.target == queue

    def by_metric(info: SeriesInfo) -> str:
        return info.metric

    states = [t for s in BACKLOG_STATES for t in fetch(store, window, "bullmq", s, keep=only, name=by_metric)]
    rates = [t for m in ("completed_per_s", "failed_per_s")
             for t in fetch(store, window, "bullmq", m, keep=only, name=by_metric)]
    return [
        Chart(f"{queue}: jobs by state", "jobs", states, stacked=True),
        Chart(f"{queue}: completed and failed", "1/s", rates),
        Chart(f"{queue}: oldest waiting job", "s",
              fetch(store, window, "bullmq", "oldest_waiting_age_s", keep=only, name=by_metric)),
        Chart(f"{queue}: workers", "workers", fetch(store, window, "bullmq", "workers", keep=only, name=by_metric)),
    ]
