"""Postgres connection budget, sessions, long transactions, lock waiters, counters (docs/design-notes.md#postgres).

One autocommit monitoring connection per database (inside a transaction ``pg_stat_activity`` is a frozen
snapshot) with ``application_name=fleetdeck-monitor``, which every count excludes. All reads are the cheap views:
no ``pg_locks`` or ``pg_blocking_pids()`` (they take the lock manager's locks). PgBouncer's console speaks only
the simple query protocol, hence ``ClientCursor``; its columns are read by name because they change by version.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec
from collectors.clients import CollectorClients
from core.config import FleetConfig
from core.samples import Sample, labels_of

SOURCE = "postgres"
MONITOR_APPLICATION = "fleetdeck-monitor"

REGISTRY = MetricRegistry(
    SOURCE,
    [
        UP,
        LATENCY,
        MetricSpec("connections", "count", "client sessions by state and application (monitor excluded)"),
        MetricSpec("connections_total", "count", "client sessions (monitor excluded)"),
        MetricSpec("monitor_connections", "count", "sessions of fleetdeck monitors (every collecting process has one)"),
        MetricSpec("max_connections", "count", "max_connections"),
        MetricSpec("connection_budget", "count", "max_connections - superuser_reserved - reserved (PG16+)"),
        MetricSpec("headroom", "count", "connection_budget - all client sessions (the monitor included: it uses one)"),
        MetricSpec("headroom_ratio", "ratio", "headroom / connection_budget"),
        MetricSpec("longest_xact_s", "s", "age of the oldest open transaction"),
        MetricSpec("idle_in_xact_max_s", "s", "longest time a session has sat idle in transaction"),
        MetricSpec("lock_waiters", "count", "sessions with wait_event_type = 'Lock'"),
        MetricSpec("xact_commit", "count", "pg_stat_database raw counter (text = stats_reset)"),
        MetricSpec("xact_rollback", "count", "pg_stat_database raw counter"),
        MetricSpec("blks_hit", "count", "pg_stat_database raw counter"),
        MetricSpec("blks_read", "count", "pg_stat_database raw counter"),
        MetricSpec("deadlocks", "count", "pg_stat_database raw counter"),
        MetricSpec("temp_bytes", "bytes", "pg_stat_database raw counter"),
        MetricSpec("cache_hit_ratio", "ratio", "blks_hit / (blks_hit + blks_read) since stats_reset"),
        MetricSpec("pgbouncer_cl_active", "count", "SHOW POOLS cl_active (labels database, user)"),
        MetricSpec("pgbouncer_cl_waiting", "count", "SHOW POOLS cl_waiting (labels database, user)"),
        MetricSpec("pgbouncer_sv_active", "count", "SHOW POOLS sv_active (labels database, user)"),
        MetricSpec("pgbouncer_sv_idle", "count", "SHOW POOLS sv_idle (labels database, user)"),
        MetricSpec("pgbouncer_maxwait_s", "s", "SHOW POOLS maxwait (+maxwait_us) (labels database, user)"),
        MetricSpec("pgbouncer_xact_total", "count", "SHOW STATS total_xact_count (labels database)"),
        MetricSpec("pgbouncer_query_total", "count", "SHOW STATS total_query_count (labels database)"),
    ],
)

_SETTINGS_SQL = """
SELECT name, setting::int AS value FROM pg_settings
WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')
"""
# every client session, grouped; the monitor's own row is kept apart so counts can exclude it
_SESSIONS_SQL = """
SELECT coalesce(state, 'unknown') AS state, application_name AS application,
       (application_name = %(me)s) AS is_monitor, count(*) AS n
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3
"""
_AGES_SQL = """
SELECT
  coalesce(max(extract(epoch FROM now() - xact_start)) FILTER (WHERE xact_start IS NOT NULL), 0) AS longest_xact_s,
  coalesce(max(extract(epoch FROM now() - state_change))
           FILTER (WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')), 0) AS idle_in_xact_max_s,
  count(*) FILTER (WHERE wait_event_type = 'Lock') AS lock_waiters
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND application_name <> %(me)s
"""
_DATABASE_SQL = """
SELECT xact_commit, xact_rollback, blks_hit, blks_read, deadlocks, temp_bytes,
       coalesce(extract(epoch FROM stats_reset), 0) AS stats_reset
FROM pg_stat_database WHERE datname = current_database()
"""


class PostgresTarget(NamedTuple):
    key: str  # "postgres:<name>"
    name: str
    dsn: str
    pgbouncer_dsn: str | None


def targets_from_config(config: FleetConfig) -> list[PostgresTarget]:
    return [PostgresTarget(f"postgres:{pg.name}", pg.name, pg.dsn, pg.pgbouncer_dsn) for pg in config.postgres]


class PostgresCollector(CollectorBase[PostgresTarget]):
    name = "postgres"
    source = SOURCE
    registry = REGISTRY

    def __init__(
        self,
        config: FleetConfig | None = None,
        fixed_targets: list[PostgresTarget] | None = None,
        timeout_s: float | None = None,
        clients: CollectorClients | None = None,
    ) -> None:
        super().__init__(config, clients, fixed_targets)
        self.timeout_s = timeout_s if timeout_s is not None else (config.collectors.timeout_s if config else 4.0)
        self._connections: dict[str, psycopg.AsyncConnection[Any]] = {}

    def targets(self) -> list[PostgresTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        return targets_from_config(self.config) if self.config else []

    async def _connection(self, target: PostgresTarget) -> psycopg.AsyncConnection[Any]:
        conn = self._connections.get(target.key)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        conn = await self.clients.connect_postgres(
            target.dsn,
            autocommit=True,
            application_name=MONITOR_APPLICATION,
            connect_timeout=max(1, int(self.timeout_s)),
            row_factory=dict_row,
        )
        # a stuck catalog lock must not hold the monitor longer than a tick
        await conn.execute(f"SET statement_timeout = {int(self.timeout_s * 1000)}")
        self._connections[target.key] = conn
        return conn

    async def collect(self, target: PostgresTarget) -> list[Sample]:
        key = target.key
        ts = time.time()
        started = time.perf_counter()
        try:
            conn = await self._connection(target)
            settings = {row["name"]: row["value"] for row in await (await conn.execute(_SETTINGS_SQL)).fetchall()}
            sessions = await (await conn.execute(_SESSIONS_SQL, {"me": MONITOR_APPLICATION})).fetchall()
            ages = await (await conn.execute(_AGES_SQL, {"me": MONITOR_APPLICATION})).fetchone()
            database = await (await conn.execute(_DATABASE_SQL)).fetchone()
        except BaseException:
            await self._drop(target.key)  # reconnect next tick rather than reuse a broken session
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0
        sample = REGISTRY.sample
        out = [sample(key, "up", 1, ts), sample(key, "latency_ms", latency_ms, ts)]
        total_excluding_monitor = 0
        all_sessions = 0
        for row in sessions:
            all_sessions += int(row["n"])
            if row["is_monitor"]:
                continue
            total_excluding_monitor += int(row["n"])
            labels = labels_of(state=row["state"], application=row["application"] or "")
            out.append(sample(key, "connections", row["n"], ts, labels=labels))
        max_connections = settings.get("max_connections", 0)
        budget = (
            max_connections
            - settings.get("superuser_reserved_connections", 0)
            - settings.get("reserved_connections", 0)  # PG16+; absent before
        )
        headroom = budget - all_sessions
        out += [
            sample(key, "connections_total", total_excluding_monitor, ts),
            sample(key, "monitor_connections", all_sessions - total_excluding_monitor, ts),
            sample(key, "max_connections", max_connections, ts),
            sample(key, "connection_budget", budget, ts),
            sample(key, "headroom", headroom, ts),
            sample(key, "headroom_ratio", headroom / budget if budget > 0 else 0.0, ts),
        ]
        if ages is not None:
            out += [
                sample(key, "longest_xact_s", float(ages["longest_xact_s"]), ts),
                sample(key, "idle_in_xact_max_s", float(ages["idle_in_xact_max_s"]), ts),
                sample(key, "lock_waiters", ages["lock_waiters"], ts),
            ]
        if database is not None:
            # text = stats_reset (unix s): a changed text marks a counter reset for rate queries; one series each
            reset = str(int(float(database["stats_reset"])))
            for metric in ("xact_commit", "xact_rollback", "blks_hit", "blks_read", "deadlocks", "temp_bytes"):
                out.append(sample(key, metric, float(database[metric] or 0), ts, text=reset))
            hits, reads = float(database["blks_hit"] or 0), float(database["blks_read"] or 0)
            if hits + reads > 0:
                out.append(sample(key, "cache_hit_ratio", hits / (hits + reads), ts))
        if target.pgbouncer_dsn:
            out.extend(await self._pgbouncer(target, ts))
        return out

    async def _pgbouncer(self, target: PostgresTarget, ts: float) -> list[Sample]:
        """SHOW POOLS / SHOW STATS; simple protocol only (ClientCursor), columns by name."""
        assert target.pgbouncer_dsn is not None
        key = target.key
        sample = REGISTRY.sample
        out: list[Sample] = []
        async with (
            await self.clients.connect_postgres(
                target.pgbouncer_dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.timeout_s)),
                cursor_factory=psycopg.AsyncClientCursor,
            ) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute("SHOW POOLS")
            for row in await cur.fetchall():
                labels = labels_of(database=str(row.get("database")), user=str(row.get("user")))
                for column in ("cl_active", "cl_waiting", "sv_active", "sv_idle"):
                    if row.get(column) is not None:
                        out.append(sample(key, f"pgbouncer_{column}", float(row[column]), ts, labels=labels))
                if row.get("maxwait") is not None:
                    wait = float(row["maxwait"]) + float(row.get("maxwait_us") or 0) / 1e6
                    out.append(sample(key, "pgbouncer_maxwait_s", wait, ts, labels=labels))
            await cur.execute("SHOW STATS")
            for row in await cur.fetchall():
                labels = labels_of(database=str(row.get("database")))
                for column, metric in (
                    ("total_xact_count", "pgbouncer_xact_total"),
                    ("total_query_count", "pgbouncer_query_total"),
                ):
                    if row.get(column) is not None:
                        out.append(sample(key, metric, float(row[column]), ts, labels=labels))
        return out

    async def _drop(self, key: str) -> None:
        conn = self._connections.pop(key, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        for key in list(self._connections):
            await self._drop(key)
