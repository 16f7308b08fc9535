"""The local orchestrator against real processes: start, list, stop (graceful and forced), adopt after restart."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions.backends.base import DEAD, LIVE_STATES, RUNNING, Refused
from actions.backends.local import LocalOrchestrator
from core.config import FleetConfig
from core.process import http_get, pid_alive
from core.store import ReplicaRecord, Store
from tests.support import free_port_block
from tests.support_standin import cleanup, standin_config


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[FleetConfig, LocalOrchestrator]]:
    config = standin_config(tmp_path, free_port_block(6))
    orchestrator = LocalOrchestrator(config, Store(config.store_url))
    yield config, orchestrator
    cleanup(config)


def test_start_list_stop(fleet: tuple[FleetConfig, LocalOrchestrator]) -> None:
    config, orchestrator = fleet
    service = config.service("web")
    # Something else listens on the first port of the range: start() must skip it.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", service.ports.start))
    blocker.listen()
    try:
        first = orchestrator.wait_healthy(service, orchestrator.start(service))
        second = orchestrator.wait_healthy(service, orchestrator.start(service))
    finally:
        blocker.close()
    assert (first.instance_id, second.instance_id) == ("web-1", "web-2")
    assert service.ports.start not in (first.port, second.port)
    assert first.port != second.port
    status, body = http_get(f"{second.base_url}/health", 2)
    assert status == 200 and b"web-2" in body
    assert (orchestrator.log_dir / "web-1.log").read_text().count("standin web-1") == 1

    listed = orchestrator.list(service)
    assert [(r.instance_id, r.state, r.pid) for r in listed] == [
        ("web-1", RUNNING, first.pid), ("web-2", RUNNING, second.pid)
    ]

    stopped = orchestrator.stop(service, "web-1")
    assert stopped.state == "stopped"
    assert not pid_alive(first.pid)
    assert [r.instance_id for r in orchestrator.list(service)] == ["web-2"]
    # the lowest free number is reused, on a port no live replica holds
    third = orchestrator.start(service)
    assert third.instance_id == "web-1" and third.port != second.port
    with pytest.raises(Refused):
        orchestrator.stop(service, "web-9")


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    config = standin_config(tmp_path, free_port_block(6), extra_args="--ignore-term")
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    service = config.service("web")
    try:
        replica = orchestrator.wait_healthy(service, orchestrator.start(service))
        began = time.monotonic()
        orchestrator.stop(service, replica.instance_id, grace_s=0.6)
        elapsed = time.monotonic() - began
        assert not pid_alive(replica.pid)
        assert elapsed >= 0.6, "SIGKILL came before the grace period ended"
        stops = store.events(0, time.time() + 1, kind="replica.stop")
        assert stops[-1].details["outcome"] == "killed"
        assert store.replicas("web") == []
    finally:
        cleanup(config)


def test_adopt_after_restart(fleet: tuple[FleetConfig, LocalOrchestrator]) -> None:
    config, orchestrator = fleet
    service = config.service("web")
    started = [orchestrator.wait_healthy(service, orchestrator.start(service)) for _ in range(3)]
    victim = started[1]
    os.killpg(victim.pid or 0, signal.SIGKILL)
    assert Store(config.store_url).replicas("web")[1].state == RUNNING  # the store still believes in it
    # A record whose pid is alive but is someone else (here: this test process) must not be adopted or signalled.
    Store(config.store_url).upsert_replica(
        ReplicaRecord("web", "web-4", "local", "127.0.0.1", service.ports.end, os.getpid(), RUNNING, time.time(),
                      str(os.getpid()))
    )

    # "fleetdeck restart": a new store object and a new orchestrator on the same store
    adopted = LocalOrchestrator(config, Store(config.store_url))
    listed = {r.instance_id: r for r in adopted.list(service)}
    assert listed["web-1"].state == RUNNING and listed["web-1"].pid == started[0].pid
    assert listed["web-3"].state == RUNNING and listed["web-3"].pid == started[2].pid
    assert listed["web-2"].state == DEAD
    assert listed["web-4"].state == DEAD, "a recycled pid was adopted"

    replacement = adopted.start(service)
    assert replacement.instance_id == "web-2"  # the dead one's slot, no duplicate
    live = [r for r in adopted.list(service) if r.state in LIVE_STATES]
    assert sorted(r.instance_id for r in live) == ["web-1", "web-2", "web-3"]
    assert len({r.port for r in live}) == 3
    adopted.stop(service, "web-4")  # only removes the record: the pid is not ours
    assert pid_alive(os.getpid())
    for replica in live:
        adopted.stop(service, replica.instance_id, grace_s=3)
        assert not pid_alive(replica.pid)
    assert Store(config.store_url).replicas("web") == []
