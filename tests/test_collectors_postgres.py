"""Postgres collector against the machine's Postgres with connections the test opens itself.

pg_stat_activity is server-wide and other suites run concurrently, so exact deltas are asserted on this test's
own application_name; totals are asserted for internal consistency within one snapshot.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from collectors.postgres import MONITOR_APPLICATION, PostgresCollector, PostgresTarget
from collectors.runner import Runner
from tests.support import unique_name


def _by(samples: list) -> dict[tuple[str, tuple], float]:  # type: ignore[type-arg]
    return {(s.metric, s.labels): s.value for s in samples}


def test_sessions_headroom_ages_and_lock_waiters(pg_dsn: str) -> None:
    app = unique_name("fdpg")
    target = PostgresTarget("postgres:main", "main", pg_dsn, None)
    collector = PostgresCollector(fixed_targets=[target], timeout_s=5)
    runner = Runner(timeout_s=10)
    loop = asyncio.new_event_loop()
    opened: list[psycopg.Connection] = []
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as setup:
            setup.execute("CREATE TABLE IF NOT EXISTS locked (id int)")
        before = loop.run_until_complete(runner.run(collector, target))
        assert before[0].value == 1, before[0].text
        for _ in range(4):
            opened.append(psycopg.connect(pg_dsn, application_name=app, autocommit=True))
        holder, second_idle_tx, _idle, waiter = opened
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")  # now idle in transaction, holding the lock
        second_idle_tx.execute("BEGIN")
        second_idle_tx.execute("SELECT 1")
        blocked = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM locked"), daemon=True)
        blocked.start()
        time.sleep(1.2)
        after = loop.run_until_complete(runner.run(collector, target))
        holder.execute("ROLLBACK")  # releases the waiter
        blocked.join(10)
        assert not blocked.is_alive()
        loop.run_until_complete(collector.aclose())
    finally:
        loop.close()
        for conn in opened:
            conn.close()
    got = _by(after)
    assert got[("up", ())] == 1
    mine = {
        labels: value
        for (metric, labels), value in got.items()
        if metric == "connections" and ("application", app) in labels
    }
    assert mine == {
        (("application", app), ("state", "idle in transaction")): 2,
        (("application", app), ("state", "active")): 1,
        (("application", app), ("state", "idle")): 1,
    }
    assert not any(("application", MONITOR_APPLICATION) in labels for (_m, labels) in got)
    with psycopg.connect(pg_dsn) as check:
        max_connections = int(check.execute("SHOW max_connections").fetchone()[0])
        reserved = int(check.execute("SHOW superuser_reserved_connections").fetchone()[0])
    assert got[("max_connections", ())] == max_connections
    assert got[("connection_budget", ())] == max_connections - reserved
    # same snapshot: headroom = budget - (sessions excluding monitors) - the monitors' sessions: this test's own
    # plus any other collecting process on the server (a running demo, a parallel test run)
    assert got[("monitor_connections", ())] >= 1
    assert got[("headroom", ())] == (
        got[("connection_budget", ())] - got[("connections_total", ())] - got[("monitor_connections", ())]
    )
    assert abs(got[("headroom_ratio", ())] - got[("headroom", ())] / got[("connection_budget", ())]) < 1e-9
    assert got[("lock_waiters", ())] >= 1
    assert got[("idle_in_xact_max_s", ())] >= 1.0 and got[("longest_xact_s", ())] >= 1.0
    assert 0 < got[("cache_hit_ratio", ())] <= 1
    assert got[("xact_commit", ())] >= 1


def test_unreachable_postgres_is_up0_with_error() -> None:
    target = PostgresTarget("postgres:gone", "gone", "postgresql://127.0.0.1:1/none", None)
    collector = PostgresCollector(fixed_targets=[target], timeout_s=2)
    samples = asyncio.run(Runner(timeout_s=5).run(collector, target))
    assert samples[0].metric == "up" and samples[0].value == 0 and "OperationalError" in (samples[0].text or "")
