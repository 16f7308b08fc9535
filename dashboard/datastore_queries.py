"""What the Database and Redis pages show, computed from the Store: tiles, tables and chart traces. No Streamlit.

Built on the basics of dashboard/queries.py (``fetch``, ``latest_by_target``, ``Tile``, ``Chart``); moved out of it
unchanged to keep both modules near the ~500-line aim. Metric names follow docs/architecture.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from dashboard.queries import Chart, Tile, fetch, fmt, labelled_latest, latest_by_target, summed, text_of, value_of
from dashboard.ranges import Window
from dashboard.series import Trace

if TYPE_CHECKING:
    from core.store import SeriesInfo, StoreView


# -------------------------------------------------------------------------------------------------- postgres


@dataclass
class PostgresView:
    target: str
    by_state: dict[str, float]
    by_application: pd.DataFrame  # application, state, connections
    tiles: list[Tile]
    budget: float | None
    max_connections: float | None


def postgres_targets(store: StoreView) -> list[str]:
    return sorted(t for t in latest_by_target(store, "postgres") if not t.startswith("pgbouncer"))


def postgres_view(store: StoreView, target: str) -> PostgresView:
    metrics = latest_by_target(store, "postgres").get(target, {})
    connections = labelled_latest(store, "postgres", "connections", target=target)
    by_state: dict[str, float] = defaultdict(float)
    app_rows = []
    for row in connections:
        labels = dict(row.series.labels)
        state = labels.get("state", "?")
        by_state[state] += row.value
        app_rows.append({"application": labels.get("application", "") or "(none)", "state": state,
                         "connections": row.value})
    by_app = pd.DataFrame(app_rows, columns=["application", "state", "connections"])
    if not by_app.empty:
        by_app = by_app.sort_values(["connections", "application"], ascending=[False, True]).reset_index(drop=True)
    used = value_of(metrics, "connections_total")
    budget = value_of(metrics, "connection_budget")
    limit = value_of(metrics, "max_connections")
    longest = value_of(metrics, "longest_xact_s")
    idle_xact = value_of(metrics, "idle_in_xact_max_s")
    waiters = value_of(metrics, "lock_waiters")
    hit = value_of(metrics, "cache_hit_ratio")
    headroom = value_of(metrics, "headroom")
    tiles = [
        Tile("Connections", f"{used:.0f} / {budget:.0f}" if used is not None and budget else fmt(used, ".0f"), used,
             "client connections / budget", bad=used is not None and bool(budget) and used >= (budget or 0)),
        Tile("Headroom", fmt(headroom, ".0f"), headroom, "max_connections minus reserved minus in use",
             bad=headroom is not None and headroom <= 0),
        Tile("Longest xact", fmt(longest, ".1f", " s"), longest, "age of the oldest open transaction",
             bad=(longest or 0) > 60),
        Tile("Idle in xact", fmt(idle_xact, ".1f", " s"), idle_xact, "longest idle-in-transaction session",
             bad=(idle_xact or 0) > 30),
        Tile("Lock waiters", fmt(waiters, ".0f"), waiters, "sessions waiting on a lock", bad=(waiters or 0) > 0),
        Tile("Cache hit ratio", fmt(None if hit is None else hit * 100, ".1f", " %"), hit,
             "blks_hit / (blks_hit + blks_read)", bad=hit is not None and hit < 0.9),
    ]
    return PostgresView(target, dict(by_state), by_app, tiles, budget, limit)


def postgres_charts(store: StoreView, window: Window, target: str) -> list[Chart]:
    def only(info: SeriesInfo) -> bool:
        return info.target == target and not info.labels

    def series(metric: str, label: str | None = None, rate: bool = False) -> list[Trace]:
        return fetch(store, window, "postgres", metric, keep=only, name=lambda _i: label or metric, rate=rate)

    commits = series("xact_commit", "commits/s", rate=True)
    rollbacks = series("xact_rollback", "rollbacks/s", rate=True)
    budget = value_of(latest_by_target(store, "postgres").get(target, {}), "connection_budget")
    by_state = fetch(store, window, "postgres", "connections",
                     keep=lambda i: i.target == target and bool(i.labels),
                     name=lambda i: dict(i.labels).get("state", "?"))
    state_totals = summed_by_name(by_state, window)
    return [
        Chart("Connections by state", "connections", state_totals, stacked=True,
              reference_lines={"budget": budget} if budget else {}),
        Chart("Commits and rollbacks", "1/s", commits + rollbacks),
        Chart("Cache hit ratio", "ratio", series("cache_hit_ratio", "hit ratio")),
        Chart("Longest transaction / lock waiters", "", series("longest_xact_s", "longest xact (s)")
              + series("lock_waiters", "lock waiters")),
    ]


def summed_by_name(traces: Sequence[Trace], window: Window) -> list[Trace]:
    """Traces sharing a name (e.g. one state across applications) added into one."""
    groups: dict[str, list[Trace]] = defaultdict(list)
    for trace in traces:
        groups[trace.name].append(trace)
    return [t for name in sorted(groups) for t in summed(name, groups[name], window)]


PGBOUNCER_POOL_COLUMNS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait_s")


def pgbouncer_pools(store: StoreView, target: str) -> pd.DataFrame:
    """PgBouncer SHOW POOLS of one Postgres target (metrics `pgbouncer_*` labelled database/user); empty without
    PgBouncer."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in store.latest(source="postgres", target=target):
        column = row.series.metric.removeprefix("pgbouncer_")
        labels = dict(row.series.labels)
        if not row.series.metric.startswith("pgbouncer_") or column not in PGBOUNCER_POOL_COLUMNS:
            continue
        key = (labels.get("database", ""), labels.get("user", ""))
        rows.setdefault(key, {"database": key[0], "user": key[1]})[column] = row.value
    frame = pd.DataFrame(list(rows.values()), columns=["database", "user", *PGBOUNCER_POOL_COLUMNS])
    return frame.sort_values(["database", "user"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------- redis


@dataclass
class RedisView:
    target: str
    used_memory: float | None
    maxmemory: float | None
    policy: str | None
    policy_ok: bool | None  # None: unknown
    tiles: list[Tile]


def redis_targets(store: StoreView) -> list[str]:
    return sorted(latest_by_target(store, "redis"))


def redis_view(store: StoreView, target: str, window: Window) -> RedisView:
    metrics = latest_by_target(store, "redis").get(target, {})
    used = value_of(metrics, "used_memory_bytes")
    maxmemory = value_of(metrics, "maxmemory_bytes")
    policy_value = value_of(metrics, "maxmemory_policy")
    policy = text_of(metrics, "maxmemory_policy")
    evicted = fetch(store, window, "redis", "evicted_keys", keep=lambda i: i.target == target)
    evicted_in_window = (float(evicted[0].value[-1] - evicted[0].value[0])
                         if evicted and len(evicted[0]) > 1 else None)
    clients = value_of(metrics, "connected_clients")
    ops = value_of(metrics, "ops_per_s")
    rejected = value_of(metrics, "rejected_connections")
    # short values: a st.metric cuts what does not fit its column ("50 / 100 MiB, no max" was cut off)
    memory_text = "—" if used is None else (f"{used / 2**20:.1f} MiB" if used < 10 * 2**20
                                            else f"{used / 2**20:.0f} MiB")
    if maxmemory is None:
        max_text = "—"
    elif maxmemory <= 0:
        max_text = "unlimited"  # maxmemory 0: Redis grows until the machine runs out
    else:
        max_text = f"{maxmemory / 2**20:.0f} MiB" + (f" ({used / maxmemory:.0%} used)" if used is not None else "")
    tiles = [
        Tile("Memory", memory_text, used, "used_memory",
             bad=bool(maxmemory) and used is not None and used >= 0.9 * (maxmemory or 1)),
        Tile("maxmemory", max_text, maxmemory, "Redis's memory limit (maxmemory 0 = unlimited) and the share used",
             bad=bool(maxmemory) and used is not None and used >= 0.9 * (maxmemory or 1)),
        Tile("Clients", fmt(clients, ".0f"), clients, "connected clients"),
        Tile("Ops/s", fmt(ops, ".0f"), ops, "commands processed per second"),
        Tile("Evicted keys (range)", fmt(evicted_in_window, ".0f"), evicted_in_window,
             "keys evicted within the chosen range: BullMQ loses jobs when Redis evicts", bad=bool(evicted_in_window)),
        Tile("Rejected connections", fmt(rejected, ".0f"), rejected, "connections refused (maxclients)",
             bad=bool(rejected)),
    ]
    return RedisView(target, used, maxmemory, policy,
                     None if policy_value is None else policy_value >= 1, tiles)


def redis_charts(store: StoreView, window: Window, target: str) -> list[Chart]:
    def only(info: SeriesInfo) -> bool:
        return info.target == target

    def named(metric: str, label: str, scale: float = 1.0, rate: bool = False) -> list[Trace]:
        traces = fetch(store, window, "redis", metric, keep=only, name=lambda _i: label, rate=rate)
        return [Trace(t.name, t.ts, t.value * scale, t.vmin * scale, t.vmax * scale) for t in traces]

    mib = 1 / 2**20
    maxmemory = value_of(latest_by_target(store, "redis").get(target, {}), "maxmemory_bytes")
    return [
        Chart("Memory", "MiB", named("used_memory_bytes", "used", mib) + named("used_memory_rss_bytes", "rss", mib),
              reference_lines={"maxmemory": maxmemory * mib} if maxmemory else {}),
        Chart("Clients", "clients", named("connected_clients", "connected") + named("blocked_clients", "blocked")),
        Chart("Ops/s", "1/s", named("ops_per_s", "ops/s")),
        Chart("Evictions", "keys/s", named("evicted_keys", "evicted/s", rate=True)),
    ]

