"""Drain decides "idle" from what nginx shows, not from the app's own in-flight counter.

A Node stand-in whose counter counts every request (the health probe too, like most Express apps) or reports no
counter at all, behind the real managed nginx: drain, scale-down and restart finish in about the real in-flight
time, and still wait for a slow request that is really in flight."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions import fleet
from actions.audit import progress_events
from actions.auth import Principal
from actions.backends.base import DOWN, LIVE_STATES
from actions.backends.local import LocalOrchestrator
from actions.backends.nginx import ManagedNginx
from actions.drain_evidence import AccessLogWatch, connections_to
from actions.operations import FleetActions, probe_health
from core.config import FleetConfig, parse_config
from core.store import Store
from tests.support import free_port, free_port_block

OPERATOR = Principal("test-operator", "operator", "dashboard")

HARNESS = Principal("test-harness", "admin", "cli")  # up/down are admin, audited verbs


def node_fleet(base: Path, in_flight: str) -> FleetConfig:
    start = free_port_block(8)
    data = {
        "state_dir": str(base / "run"),
        "store": {"url": f"sqlite:///{base}/fleetdeck.db"},
        "services": [{
            "name": "web", "backend": "local",
            "command": "node {root}/tests/node_standin/app.js",
            "env": {"PORT": "{port}", "INSTANCE_ID": "{instance_id}", "IN_FLIGHT": in_flight},
            "ports": {"start": start, "end": start + 7},
            "replicas": 3, "min_replicas": 1, "max_replicas": 5, "min_healthy": 1,
            "stop_grace_s": 5, "boot_timeout_s": 20, "drain_timeout_s": 8,
        }],
        "load_balancer": {"mode": "managed", "service": "web", "listen": f"127.0.0.1:{free_port()}",
                          "worker_processes": 1, "worker_shutdown_timeout_s": 10},
        "auth": {"cli_roles": {"*": "operator"}},
    }
    return parse_config(data, "test", base)


@pytest.fixture(params=["counts-probe", "none"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetConfig]:
    config = node_fleet(tmp_path, "all" if request.param == "counts-probe" else "none")
    fleet.up(config, principal=HARNESS, dashboard=False, progress=lambda _line: None)
    try:
        yield config
    finally:
        fleet.down(config, principal=HARNESS)


def post(url: str, timeout: float = 15.0) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status), str(json.loads(response.read())["instanceId"])


def idle_evidence(store: Store, op_id: str) -> dict[str, object]:
    idle = [line for line in progress_events(store, op_id) if line.get("step") == "idle"]
    assert idle, progress_events(store, op_id)
    return idle[-1]


def test_drain_scale_down_and_restart_finish_on_an_app_that_counts_its_probe(running: FleetConfig) -> None:
    config = running
    store = Store(config.store_url)
    actions = FleetActions(config, store)
    service = config.service("web")
    replica = next(r for r in LocalOrchestrator(config, store).list(service) if r.instance_id == "web-2")
    reported = probe_health(replica, service).in_flight
    # the scenario: an idle replica reports 1 in flight (the probe itself), or no count at all
    assert reported == (1 if service.env["IN_FLIGHT"] == "all" else None)

    began = time.monotonic()
    drained = actions.drain(OPERATOR, "web-2")
    assert drained.ok, drained.detail
    assert time.monotonic() - began < 6, "an idle replica drains in about its real in-flight time"
    assert {s.instance_id: s.state for s in ManagedNginx(config, store).current()}["web-2"] == DOWN
    evidence = idle_evidence(store, drained.op_id)
    assert evidence.get("upstream_connections") == 0 and evidence.get("old_workers") == 0
    assert actions.undrain(OPERATOR, "web-2").ok

    scaled = actions.scale(OPERATOR, "web", 2)
    assert scaled.ok, scaled.detail
    restarted = actions.restart(OPERATOR, "web-1")
    assert restarted.ok, restarted.detail
    live = [r for r in LocalOrchestrator(config, store).list(service) if r.state in LIVE_STATES]
    assert len(live) == 2


def test_drain_waits_for_a_request_really_in_flight(running: FleetConfig) -> None:
    """Slow POSTs through nginx: the drain of the replica serving one must last until it is answered, and every
    slow request gets its 200 — the app's counter (probe-inflated or absent) plays no part."""
    config = running
    store = Store(config.store_url)
    assert config.load_balancer is not None
    url = f"http://{config.load_balancer.listen}/work/echo?ms=2500"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, url) for _ in range(6)]  # round robin: every replica gets some
        time.sleep(0.6)
        service = config.service("web")
        web2 = next(r for r in LocalOrchestrator(config, store).list(service) if r.instance_id == "web-2")
        nginx = ManagedNginx(config, store)
        workers = ManagedNginx._children_of(nginx.master_pid() or 0)
        assert connections_to(web2.address, workers) >= 1, "the slow request is visible as an upstream connection"
        began = time.monotonic()
        drained = FleetActions(config, store).drain(OPERATOR, "web-2")
        waited = time.monotonic() - began
        answers = [f.result() for f in futures]
    assert drained.ok, drained.detail
    assert waited >= 1.2, f"drain returned after {waited:.2f}s while a request was still in flight"
    assert [status for status, _ in answers] == [200] * 6
    assert "web-2" in {instance for _, instance in answers}


def test_access_log_watch_counts_only_new_lines_for_the_address(tmp_path: Path) -> None:
    log = tmp_path / "access.json.log"
    log.write_text(json.dumps({"t": 1.0, "ua": "127.0.0.1:9102", "s": 200}) + "\n")
    watch = AccessLogWatch(log, "127.0.0.1:9102")
    assert watch.new_requests() == 0  # the first look only remembers where the log ends
    with log.open("a") as handle:
        handle.write(json.dumps({"t": 2.0, "ua": "127.0.0.1:9101, 127.0.0.1:9102", "s": 200}) + "\n")
        handle.write(json.dumps({"t": 3.0, "ua": "127.0.0.1:91021", "s": 200}) + "\n")
        handle.write('{"t": 4.0, "ua": "127.0.0.1:9102"')  # half-written: read next time
    assert watch.new_requests() == 1 and watch.last_request_ts == 2.0
    with log.open("a") as handle:
        handle.write(', "s": 200}\n')
    assert watch.new_requests() == 1 and watch.last_request_ts == 4.0
