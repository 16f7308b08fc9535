"""How the autoscaler acts: it counts the replicas the way the `scale` action does (as the service's backend lists
them), and a scale the guard rails refuse is explained and tried again at the next interval.

The count test runs real stand-in replicas on the local backend (tests/test_local_backend.py) and kills one the
way a crash would, so the replica registry still says `running` until something lists the service. The busy test
is in the fast tier: the operations over in-memory fakes of the orchestrator and health probe (tests/fakes.py)
on a real in-memory store.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from actions.autoscale import Autoscaler
from actions.backends.base import LIVE_STATES
from actions.backends.local import LocalOrchestrator
from actions.operations import FleetActions
from core.config import parse_config
from core.process import pid_alive
from core.samples import Sample
from core.store import Store
from tests.fakes import FakeHealth, FakeOrchestrator
from tests.support import free_port_block
from tests.support_collector import wait_for
from tests.support_standin import cleanup, write_standin


def test_a_replica_whose_process_died_is_not_counted_as_live(tmp_path: Path) -> None:
    script = write_standin(tmp_path)
    port = free_port_block(6)
    config = parse_config({
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{
            "name": "web", "backend": "local",
            "command": f"{{python}} {script} --port {{port}} --instance-id {{instance_id}}",
            "ports": {"start": port, "end": port + 5},
            "replicas": 3, "min_replicas": 1, "max_replicas": 4, "stop_grace_s": 5, "boot_timeout_s": 15,
        }],
        "autoscale": {"web": {"mode": "auto", "cpu_percent": 50}},
    }, "test", tmp_path)
    service = config.service("web")
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    try:
        replicas = [orchestrator.wait_healthy(service, orchestrator.start(service)) for _ in range(3)]
        crashed = replicas[-1]
        assert crashed.pid is not None
        os.killpg(crashed.pid, signal.SIGKILL)  # as a crash would: nobody updates the registry
        wait_for(lambda: not pid_alive(crashed.pid), 10, f"{crashed.instance_id} gone")
        assert sum(1 for r in store.replicas("web") if r.state in LIVE_STATES) == 3  # the registry lags

        # the two that run at 33 % CPU (target 50 %): ceil(2 × 33 / 50) = 2, what runs already
        now = time.time()
        store.write_samples([Sample("instance", f"web/{r.instance_id}", "cpu_percent", 33, now, "percent")
                             for r in replicas[:2]])
        record = Autoscaler(config, store).evaluate("web", config.autoscale["web"], now)

        # counted from the registry it would be 3 → 2, a scale the action then finds already done ("noop")
        assert (record["current"], record["desired"], record["acted"]) == (2, 2, False), record["summary"]
        assert record["why_not"] == "no change needed"
        assert [r.instance_id for r in orchestrator.live(service)] == [r.instance_id for r in replicas[:2]]
        assert store.audit(action="scale") == []
    finally:
        cleanup(config)
        store.close()


@pytest.mark.fast
def test_a_busy_service_is_not_scaled_the_decision_says_why_and_the_next_interval_acts(tmp_path: Path) -> None:
    config = parse_config({
        "state_dir": "run",
        "services": [{"name": "web", "backend": "local", "command": "true {port} {instance_id}",
                      "ports": {"start": 20000, "end": 20005}, "min_replicas": 1, "max_replicas": 5}],
        "autoscale": {"web": {"mode": "auto", "cpu_percent": 50, "interval": "10s"}},
    }, "fast", tmp_path)
    service = config.service("web")
    store = Store("sqlite://")
    orchestrator = FakeOrchestrator()
    orchestrator.seed(service, 2)
    autoscaler = Autoscaler(config, store, FleetActions(config, store, orchestrator=orchestrator,
                                                         health_probe=FakeHealth()))

    def busy_cpu(ts: float) -> None:  # 90 % on every replica: ceil(n × 90 / 50)
        store.write_samples([Sample("instance", f"web/{r.instance_id}", "cpu_percent", 90, ts, "percent")
                             for r in orchestrator.live(service)])

    now = time.time()
    busy_cpu(now)
    # e.g. the autoscaler of a second collector process holds the service's action lock
    assert store.acquire_lock("web", "scale", "autoscaler", "op-elsewhere", 60)[0]
    [refused] = autoscaler.tick(now)
    assert (refused["current"], refused["desired"], refused["acted"], refused["result"]) == (2, 4, True, "refused")
    assert refused["why_not"].startswith("scale refused: busy: scale by autoscaler"), refused["why_not"]
    assert len(orchestrator.live(service)) == 2 and autoscaler.tick(now + 1) == []  # the interval still counts
    store.release_lock("web", "op-elsewhere")
    busy_cpu(now + 10)
    [acted] = autoscaler.tick(now + 10)
    assert (acted["current"], acted["desired"], acted["result"]) == (2, 4, "ok")
    assert len(orchestrator.live(service)) == 4
    store.close()
