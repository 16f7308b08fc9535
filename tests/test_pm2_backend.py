"""The PM2 backend in fork mode on a real PM2 daemon (fleetdeck's own PM2_HOME under state_dir): the reference
Express app as PM2 apps behind the managed nginx, with drain/undrain/scale/restart/rolling restart under a
constant POST load and zero failed requests; `down` stops the apps and the daemon."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from actions import fleet
from actions.auth import Principal
from actions.backends.base import DOWN, LIVE_STATES, UP
from actions.backends.nginx import ManagedNginx
from actions.backends.pm2 import PM2_BINARY, Pm2Orchestrator
from actions.operations import FleetActions
from collectors.pm2 import Pm2Collector
from core.config import parse_config
from core.process import http_get, pid_alive
from core.replica_process import marked_processes
from core.store import Store
from dashboard import queries, ranges
from tests.support import free_port, free_port_block, unique_name
from tests.support_load import PostLoad, action_fleet_config

OPERATOR = Principal("test-operator", "operator", "dashboard")



@pytest.fixture(autouse=True)
def pm2_installed() -> None:
    """make test installs pm2 (`make express-app`): a missing one is a broken set-up, a failure, not a skip."""
    assert PM2_BINARY.exists(), "pm2 is missing: `make express-app` installs it with npm ci"

HARNESS = Principal("test-harness", "admin", "cli")  # up/down are admin, audited verbs


def test_pm2_fork_mode_zero_drop_and_down(tmp_path: Path, pg_dsn: str, redis_url: str) -> None:
    data = action_fleet_config(str(tmp_path), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10), free_port(),
                               app="express", backend="pm2")
    # a store of its own: the session's shared database would keep this test's `desired:web` for later fleets
    data["store"] = {"url": f"sqlite:///{tmp_path}/store.db"}
    config = parse_config(data, "test", tmp_path)
    store = Store(config.store_url)
    orchestrator = Pm2Orchestrator(config, store)
    service = config.service("web")
    fleet.up(config, principal=HARNESS, dashboard=False, progress=lambda _line: None)
    try:
        apps = {str(a["name"]): a for a in orchestrator.jlist()}
        assert sorted(apps) == ["web-1", "web-2", "web-3"]
        assert all(a["pm2_env"]["status"] == "online" and a["pm2_env"]["exec_mode"] == "fork_mode"
                   for a in apps.values())
        daemon = orchestrator.daemon_pid()
        assert daemon and pid_alive(daemon)
        assert (config.state_path / "pm2" / "pm2.pid").exists(), "PM2_HOME is fleetdeck's own, under state_dir"
        for replica in orchestrator.list(service):
            status, body = http_get(f"{replica.base_url}/health", 3)
            assert status == 200 and json.loads(body)["instanceId"] == replica.instance_id  # env placeholders
            assert replica.pid == apps[replica.instance_id]["pid"]

        # PM2's own view, as samples the Instances page shows
        collector = Pm2Collector(config, store)
        samples = asyncio.run(collector.collect(collector.targets()[0]))
        store.write_samples(samples)
        by_target = {(s.target, s.metric): s for s in samples}
        assert by_target[("pm2:web", "up")].value == 1
        for instance in ("web-1", "web-2", "web-3"):
            status = by_target[(f"web/{instance}", "pm2_status")]
            assert (status.value, status.text) == (0, "online")
            assert by_target[(f"web/{instance}", "pm2_memory_bytes")].value > 10_000_000
            assert by_target[(f"web/{instance}", "pm2_restarts")].value == 0
            assert by_target[(f"web/{instance}", "pm2_unstable_restarts")].value == 0
            assert by_target[(f"web/{instance}", "pm2_uptime_s")].value >= 0
        now = time.time()
        table = queries.instances_table(store, now, ranges.window("1 h", now))
        assert set(table["pm2_status"]) == {"online"} and set(table["restarts"]) == {0}

        actions = FleetActions(config, store)
        nginx = ManagedNginx(config, store)
        assert config.load_balancer is not None
        port = int(config.load_balancer.listen.rsplit(":", 1)[1])
        with PostLoad("127.0.0.1", port, "/work/echo?ms=20", rate=40, workers=6) as load:
            load.wait_requests(40)
            drained = actions.drain(OPERATOR, "web-2")
            assert drained.ok, drained.detail
            assert {s.instance_id: s.state for s in nginx.current()}["web-2"] == DOWN
            assert actions.undrain(OPERATOR, "web-2").ok
            assert {s.instance_id: s.state for s in nginx.current()}["web-2"] == UP
            load.wait_requests(30)
            for wanted in (4, 2):
                scaled = actions.scale(OPERATOR, "web", wanted)
                assert scaled.ok, scaled.detail
                assert sorted(a["name"] for a in orchestrator.jlist()) == sorted(
                    r.instance_id for r in orchestrator.list(service) if r.state in LIVE_STATES)
                assert len(orchestrator.jlist()) == wanted
                load.wait_requests(30)
            rolled = actions.rolling_restart(OPERATOR, "web")
            assert rolled.ok, rolled.detail
            load.wait_requests(30)
        report = load.report
        print(report.summary())
        assert report.sent > 150, report.summary()
        assert report.non_2xx == 0 and report.transport == 0, report.summary()
    finally:
        fleet.down(config, principal=HARNESS, progress=lambda _line: None)
    assert orchestrator.daemon_pid() is None or not pid_alive(daemon)
    assert not pid_alive(daemon), "down stops fleetdeck's PM2 daemon"
    assert store.replicas() == []
    assert marked_processes(orchestrator.fleet_marker_prefix) == []


def test_pm2_cluster_mode_scale_reload_and_refused_drain(tmp_path: Path, pg_dsn: str, redis_url: str) -> None:
    data = action_fleet_config(str(tmp_path), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10), free_port(),
                               app="express", backend="pm2", replicas=2, pm2_exec_mode="cluster", stop_grace_s=12)
    data["store"] = {"url": f"sqlite:///{tmp_path}/store.db"}
    # Nothing drains a cluster instance in nginx first: the app keeps answering (Connection: close) for longer than
    # nginx keeps idle upstream connections (4 s) before it closes its listener, so no reused socket is cut.
    data["services"][0]["env"].update({"DRAIN_DELAY_S": "5", "SHUTDOWN_TIMEOUT_S": "11"})  # type: ignore[index]
    config = parse_config(data, "test", tmp_path)
    store = Store(config.store_url)
    orchestrator = Pm2Orchestrator(config, store)
    service = config.service("web")
    fleet.up(config, principal=HARNESS, dashboard=False, progress=lambda _line: None)
    daemon = orchestrator.daemon_pid()
    try:
        apps = orchestrator.jlist()
        assert [a["name"] for a in apps] == ["web", "web"]
        assert {a["pm2_env"]["exec_mode"] for a in apps} == {"cluster_mode"}
        nginx = ManagedNginx(config, store)
        assert [s.address for s in nginx.current()] == [f"127.0.0.1:{service.ports.start}"], "one shared port"
        actions = FleetActions(config, store)
        assert config.load_balancer is not None
        port = int(config.load_balancer.listen.rsplit(":", 1)[1])
        with PostLoad("127.0.0.1", port, "/work/echo?ms=20", rate=40, workers=6) as load:
            load.wait_requests(40)
            drained = actions.drain(OPERATOR, "web-1")
            assert drained.refused and "PM2 cluster mode" in drained.detail, drained.detail
            assert actions.restart(OPERATOR, "web-2").refused
            scaled = actions.scale(OPERATOR, "web", 3)
            assert scaled.ok, scaled.detail
            assert len(orchestrator.jlist()) == 3
            load.wait_requests(30)
            pids_before = {a["pid"] for a in orchestrator.jlist()}
            reloaded = actions.rolling_restart(OPERATOR, "web")
            assert reloaded.ok, reloaded.detail
            pids_after = {a["pid"] for a in orchestrator.jlist()}
            assert len(pids_after) == 3 and pids_after.isdisjoint(pids_before), "pm2 reload replaced every worker"
            load.wait_requests(30)
            assert actions.scale(OPERATOR, "web", 2).ok
            assert len(orchestrator.jlist()) == 2
            load.wait_requests(30)
        report = load.report
        print(report.summary())
        assert report.sent > 100, report.summary()
        assert report.non_2xx == 0 and report.transport == 0, report.summary()
        assert len(orchestrator.list(service)) == 2 == len(store.replicas("web"))  # mirrored for the collectors
    finally:
        fleet.down(config, principal=HARNESS, progress=lambda _line: None)
    assert daemon is not None and not pid_alive(daemon)
    assert store.replicas() == []
