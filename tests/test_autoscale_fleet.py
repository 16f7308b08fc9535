"""The autoscaler on real fleets: sample-app replicas behind the managed nginx, real load (steady, then flapping),
a real BullMQ backlog.

Short windows in the test config keep each test bounded (interval 2 s, scale-down window 15 s); the collector
scheduler runs in this process, with the autoscaler job, exactly as in `fleetdeck collect`.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from pathlib import Path
from typing import Any

from bullmq import Queue

from actions import fleet
from actions.auth import Principal
from actions.autoscale import AUTOSCALER, Autoscaler, decisions, latest_decision
from actions.backends.base import LIVE_STATES
from actions.operations import FleetActions
from collectors.scheduler import start_embedded, stop_embedded
from core.config import parse_config
from core.store import Store
from tests.support import free_port, free_port_block, unique_name
from tests.support_collector import wait_for
from tests.support_load import PostLoad, action_fleet_config

OPERATOR = Principal("test-operator", "operator", "cli")
HARNESS = Principal("test-harness", "admin", "cli")  # brings the fleet up and down (down needs admin)
WINDOW_S = 15.0
RPS_PER_REPLICA, TOLERANCE = 12, 0.2
BASE_RPS, BURST_RPS = 5, 45
# What the busy load needs: the policy keeps any count c with (base + burst) / c within the tolerance of the target,
# so ceil(50 / (12 × 1.2)) = 4. Measured rates vary from poll to poll, so counts above it come and go.
NEEDED = math.ceil((BASE_RPS + BURST_RPS) / (RPS_PER_REPLICA * (1 + TOLERANCE)))


def live(store: Store, service: str) -> int:
    return sum(1 for r in store.replicas(service) if r.state in LIVE_STATES)


def scale_events(store: Store, service: str, since: float) -> list[Any]:
    return [e for e in store.audit(start=since, action="scale") if e.who == AUTOSCALER.name and e.result == "ok"]


def grew(entry: Any) -> bool:
    """A scale that added replicas: its target above the count it started from (the audit's `before`)."""
    return int(entry.params["replicas"]) > int(entry.before["count"])


def test_load_scales_up_holds_through_flapping_then_down_after_the_window_with_no_failed_request(
        tmp_path: Path, pg_dsn: str, redis_url: str) -> None:
    data = action_fleet_config(str(tmp_path), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10),
                               lb_port := free_port(), replicas=1)
    data["store"] = {"url": f"sqlite:///{tmp_path}/fd.db"}
    data["collectors"] = {"instances_s": 1, "nginx_s": 1, "timeout_s": 2}
    data["autoscale"] = {"web": {"mode": "auto", "rps_per_replica": RPS_PER_REPLICA, "tolerance": TOLERANCE,
                                 "interval": "2s",
                                 "scale_down_window": f"{WINDOW_S:g}s", "max_step_up": 3, "max_step_down": 2,
                                 "metrics_max_age": "6s", "pause_after_manual": "10m"}}
    config = parse_config(data, "test", tmp_path)
    store = Store(config.store_url)
    fleet.up(config, principal=HARNESS, dashboard=False)
    started = time.time()
    try:
        start_embedded(config, store)
        bursts: list[PostLoad] = []

        def burst() -> PostLoad:
            load = PostLoad("127.0.0.1", lb_port, "/work/echo?ms=20", rate=BURST_RPS, workers=6)
            bursts.append(load)
            return load

        with PostLoad("127.0.0.1", lb_port, "/work/echo?ms=20", rate=BASE_RPS, workers=2) as base:
            with burst() as first:
                # one step or two (a first poll may see the load ramping up), within the policy's interval
                wait_for(lambda: live(store, "web") >= NEEDED, 45, f"the autoscaler's scale-up to {NEEDED}")
                first.wait_requests(150, timeout_s=20)  # served by the new replicas too, through the change
            for _ in range(2):  # flapping: 5 s quiet, 5 s busy, twice (a period shorter than the window)
                time.sleep(5)
                with burst() as again:
                    time.sleep(5)
                    again.wait_requests(20)
            burst_stopped = time.time()
            wait_for(lambda: live(store, "web") == 1, WINDOW_S + 40, "the scale-down back to 1")
            base.wait_requests(5)
        stop_embedded()
        for report in (*(b.report for b in bursts), base.report):
            assert report.failed == 0, report.summary()
        assert bursts[0].report.sent > 150 and len(bursts[0].report.instances) >= 3, bursts[0].report.summary()
        events = scale_events(store, "web", started)
        # up or down by what each scale did, not by when it ended: a scale-up asked for in the last busy period
        # may finish after the load stopped
        ups = [e for e in events if grew(e)]
        downs = [e for e in events if not grew(e)]
        counts = [(round(e.ts - burst_stopped, 1), e.before["count"], e.params["replicas"]) for e in events]
        assert ups and downs, counts
        # The promises are about what the load needs, not about the highest count reached: a spike of the
        # measured rate may take the count above NEEDED, and that replica may go as soon as no recommendation in
        # the window asks for it (the window holds the highest recommendation, not the highest count).
        # Flapping load: no scale-down while it flapped went below it, so none had to come back (no oscillation).
        assert all(e.params["replicas"] >= NEEDED for e in downs if e.ts <= burst_stopped), counts
        # below it only once the window had passed since the load dropped (measured with a collection lag)
        below = [e for e in downs if e.params["replicas"] < NEEDED]
        assert below, counts
        first_below_ts = min(e.ts for e in below)
        assert first_below_ts - burst_stopped >= WINDOW_S - 3, counts
        timeline = decisions(store, "web", started, time.time())
        acted = [d for d in timeline if d["acted"]]
        attempts = [(round(d["ts"] - started, 1), d["current"], d["desired"], d["result"], d["why_not"])
                    for d in acted]
        # On a starved machine a guard rail may turn an attempt down (a health probe, a drain or an nginx reload
        # too slow): the scale must then have changed nothing and the decision must say why; the promises above
        # show that a later interval got there. A no-op would mean the autoscaler decided from a wrong count.
        for attempt in (d for d in acted if d["result"] != "ok"):
            assert attempt["result"] in ("refused", "failed") and attempt["why_not"], attempts
            [outcome] = [e for e in store.audit(op_id=attempt["op_id"]) if e.result != "started"]
            assert outcome.result == "refused" or outcome.after.get("count") == outcome.before.get("count"), attempts
            warnings.warn(f"autoscale attempt not ok (nothing changed, tried again): {attempt['why_not']}",
                          stacklevel=1)
        assert any("ceil(" in reason for d in acted for reason in d["reasons"])
        held = [d for d in timeline if burst_stopped < d["ts"] < first_below_ts - 1 and not d["acted"]]
        assert held and all(d["desired"] == d["current"] for d in held)  # the window held the count
        assert any("scale-down window" in " ".join(d["reasons"]) for d in held), held

        # a manual action pauses it: scale to 2 by hand, and the autoscaler (wanting 1) leaves it alone
        manual = FleetActions(config, store).scale(OPERATOR, "web", 2)
        assert manual.ok, manual.detail
        record = Autoscaler(config, store).evaluate("web", config.autoscale["web"], time.time())
        assert record["desired"] == 1 and not record["acted"] and record["why_not"].startswith("paused: scale by")
        assert latest_decision(store, "web")["why_not"] == record["why_not"]
    finally:
        stop_embedded()
        fleet.down(config, principal=HARNESS)
        store.close()


def test_backlog_policy_scales_workers_on_a_real_bullmq_backlog(tmp_path: Path, pg_dsn: str, redis_url: str,
                                                                 redis_prefix: str) -> None:
    port = free_port_block(6)
    config = parse_config({
        "state_dir": str(tmp_path / "run"),
        "store": {"url": f"sqlite:///{tmp_path}/fd.db"},
        "services": [{
            "name": "worker",
            "command": "{python} {root}/compose/sampleapp/app.py --port {port} --instance-id {instance_id}",
            "env": {"DATABASE_URL": pg_dsn, "REDIS_URL": redis_url, "BULLMQ_PREFIX": redis_prefix,
                    "QUEUES": "jobs", "WORKER_CONCURRENCY": "1", "WORKER_METRICS_POINTS": "0", "POOL_MAX": "2",
                    "SHUTDOWN_TIMEOUT_S": "3"},
            "ports": {"start": port, "end": port + 5},
            "replicas": 1, "min_replicas": 1, "max_replicas": 4, "stop_grace_s": 4, "boot_timeout_s": 30,
        }],
        "redis": [{"name": "main", "url": redis_url, "queue_prefixes": [redis_prefix], "queues": ["jobs"]}],
        "collectors": {"instances_s": 1, "bullmq_s": 1, "timeout_s": 2},
        "autoscale": {"worker": {"mode": "auto", "interval": "2s", "max_step_up": 2, "metrics_max_age": "6s",
                                 "queue_backlog": {"queues": [f"main/{redis_prefix}:jobs"], "per_worker": 25}}},
    }, "test", tmp_path)
    store = Store(config.store_url)

    async def enqueue(count: int) -> None:
        queue = Queue("jobs", {"connection": redis_url, "prefix": redis_prefix})
        try:
            await queue.addBulk([{"name": "slow", "data": {"sleep_ms": 4000}} for _ in range(count)])
        finally:
            await queue.close()

    fleet.up(config, principal=HARNESS, dashboard=False)
    try:
        assert live(store, "worker") == 1
        asyncio.run(enqueue(150))  # 1 job at a time per worker, 4 s each: the backlog stays for minutes
        start_embedded(config, store)
        wait_for(lambda: live(store, "worker") == 4, 45, "the workers scaled to max (4) on the backlog")
        stop_embedded()
        record = latest_decision(store, "worker")
        assert record is not None
        backlog = [m for m in record["metrics"] if m["name"] == "backlog_per_worker"]
        assert backlog and backlog[0]["target"] == 25 and record["observation"]["backlog"] > 25 * 3
        steps = [e.params["replicas"] for e in store.audit(action="scale") if e.who == "autoscaler"
                 and e.result == "ok"]
        assert steps == [3, 4]  # max_step_up 2, then the max bound
    finally:
        stop_embedded()
        fleet.down(config, principal=HARNESS)
        store.close()
