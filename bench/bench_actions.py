"""Benchmark of the actions on a real fleet (3 sample-app replicas behind the managed nginx, light POST load):

- drain latency: action start → the instance out of rotation (new nginx generation live with it `down`);
- scale-up latency: action start → the new replica serving traffic (first load response it answered);

medians over several runs, printed beside the app's boot time (replica start → healthy) and the health
interval (the collector's instance interval, and the poll of the orchestrator's readiness wait).
Goals: out of rotation ≤ 1 s; scale-up ≤ boot time + one health interval.

Run: `PYTHONPATH=. .venv/bin/python bench/bench_actions.py [--runs 5]` (needs Postgres and Redis on loopback).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from actions import audit, fleet
from actions.auth import Principal
from actions.operations import FleetActions
from core.config import parse_config
from core.store import Store
from tests.support import PG_ADMIN_DSN, REDIS_URL, free_port, free_port_block, unique_name
from tests.support_load import PostLoad, action_fleet_config

BENCHER = Principal("bench", "operator", "cli")
BENCH = Principal("bench-harness", "admin", "cli")  # brings the fleet up and down (fleet_down needs admin)
READINESS_POLL_S = 0.2  # LocalOrchestrator.wait_healthy's poll interval


def step_ts(store: Store, op_id: str, step: str) -> list[float]:
    return [line["ts"] for line in audit.progress_events(store, op_id) if line.get("step") == step]


def wait_served(load: PostLoad, instance: str, timeout_s: float = 30.0) -> float:
    """Time at which `instance` answered its first load request (polls the load's counters)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if load.report.instances[instance] > 0:
            return time.time()
        time.sleep(0.005)
    raise TimeoutError(f"{instance} served nothing within {timeout_s}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    database = unique_name("fdbench")
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{database}"
    base = Path(tempfile.mkdtemp(prefix="fleetdeck-bench-actions-"))
    data = action_fleet_config(str(base), dsn, REDIS_URL, unique_name("fdb"), free_port_block(10), free_port())
    config = parse_config(data, "bench", base)
    lb_port = int(config.load_balancer.listen.rsplit(":", 1)[1]) if config.load_balancer else 0
    drain_s: list[float] = []
    scale_s: list[float] = []
    boot_s: list[float] = []
    try:
        fleet.up(config, principal=BENCH, dashboard=False)
        store = Store(config.store_url)
        actions = FleetActions(config, store)
        with PostLoad("127.0.0.1", lb_port, "/work/echo", rate=50, workers=5) as load:
            load.wait_requests(50)
            for _ in range(args.runs):
                started = time.time()
                result = actions.drain(BENCHER, "web-2")
                assert result.ok, result.detail
                out = step_ts(store, result.op_id, "out_of_rotation")
                drain_s.append(out[0] - started)
                assert actions.undrain(BENCHER, "web-2").ok
            for _ in range(args.runs):
                started = time.time()
                result = actions.scale(BENCHER, "web", 4)
                assert result.ok, result.detail
                new_id = next(i for i in (r["instance_id"] for r in result.after["replicas"])
                              if i not in {r["instance_id"] for r in result.before["replicas"]})
                first_served = wait_served(load, new_id)
                scale_s.append(first_served - started)
                boot_s.append(step_ts(store, result.op_id, "healthy")[0] - step_ts(store, result.op_id, "started")[0])
                # back to 3 (stop the new one), so every run starts from the same fleet
                assert actions.scale(BENCHER, "web", 3).ok
                load.report.instances.pop(new_id, None)  # the next run's new replica gets this id again
        report = load.report
    finally:
        fleet.down(config, principal=BENCH)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    boot = statistics.median(boot_s)
    interval = config.collectors.instances_s
    print(f"runs: {args.runs}; load during the bench: {report.summary().split(';')[0]}")
    print(f"drain → out of rotation   median {statistics.median(drain_s) * 1000:7.0f} ms"
          f"  (min {min(drain_s) * 1000:.0f}, max {max(drain_s) * 1000:.0f})   goal ≤ 1000 ms")
    print(f"scale-up → new replica serving  median {statistics.median(scale_s) * 1000:7.0f} ms"
          f"  (min {min(scale_s) * 1000:.0f}, max {max(scale_s) * 1000:.0f})")
    print(f"app boot time (start → healthy) median {boot * 1000:7.0f} ms")
    print(f"health interval: collector {interval:g} s; readiness poll while scaling {READINESS_POLL_S:g} s")
    print(f"goal scale-up ≤ boot + one health interval = {(boot + interval) * 1000:.0f} ms (collector interval),"
          f" {(boot + READINESS_POLL_S) * 1000:.0f} ms (readiness poll)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
