"""Zero dropped requests: drain/undrain, scale 3→5→2 and a rolling restart under a constant POST load through the
managed nginx, with real replicas of both sample apps (Python, and Express whose in-flight counter counts the
health probe); and the kill -9 negative control proving the load sees drops."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions.auth import Principal
from actions.backends.base import DOWN, LIVE_STATES, UP
from actions.backends.local import LocalOrchestrator
from actions.backends.nginx import ManagedNginx
from actions.operations import FleetActions
from core.config import FleetConfig, parse_config
from core.store import Store
from tests.support import free_port, free_port_block, unique_name
from tests.support_load import SAMPLE_APPS, PostLoad, action_fleet_config, running_fleet

OPERATOR = Principal("test-operator", "operator", "dashboard")


@pytest.fixture(scope="module", params=SAMPLE_APPS)
def fleet_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_dsn: str,
                 redis_url: str) -> Iterator[FleetConfig]:
    base = tmp_path_factory.mktemp(f"zero_drop_{request.param}")
    data = action_fleet_config(str(base), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10), free_port(),
                               app=request.param)
    # a store of its own per app: the session's shared database would carry `desired:web` from the other run
    data["store"] = {"url": f"sqlite:///{base}/store.db"}
    with running_fleet(parse_config(data, "test", Path(base))) as config:
        yield config


@pytest.fixture(scope="module")
def store(fleet_config: FleetConfig) -> Store:
    return Store(fleet_config.store_url)


def lb_port(config: FleetConfig) -> int:
    assert config.load_balancer is not None
    return int(config.load_balancer.listen.rsplit(":", 1)[1])


def live_ids(config: FleetConfig, store: Store) -> list[str]:
    service = config.service("web")
    return [r.instance_id for r in LocalOrchestrator(config, store).list(service) if r.state in LIVE_STATES]


def test_zero_dropped_requests_through_drain_scale_and_rolling_restart(fleet_config: FleetConfig,
                                                                       store: Store) -> None:
    actions = FleetActions(fleet_config, store)
    nginx = ManagedNginx(fleet_config, store)
    assert len(live_ids(fleet_config, store)) == 3
    with PostLoad("127.0.0.1", lb_port(fleet_config), "/work/echo?ms=20", rate=60, workers=6) as load:
        load.wait_requests(60)

        drained = actions.drain(OPERATOR, "web-2")
        assert drained.ok, drained.detail
        states = {s.instance_id: s.state for s in nginx.current()}
        assert states["web-2"] == DOWN
        before = load.report.instances["web-2"]
        load.wait_requests(60)
        assert load.report.instances["web-2"] == before, "a drained instance still got requests"
        assert drained.after["out_of_rotation_s"] < 1.0

        again = actions.drain(OPERATOR, "web-2")
        assert again.ok and again.result == "noop", again.detail

        undrained = actions.undrain(OPERATOR, "web-2")
        assert undrained.ok, undrained.detail
        assert {s.instance_id: s.state for s in nginx.current()}["web-2"] == UP
        load.wait_requests(60)
        assert load.report.instances["web-2"] > before, "an undrained instance got no requests"

        for wanted in (5, 2):
            scaled = actions.scale(OPERATOR, "web", wanted)
            assert scaled.ok, scaled.detail
            assert len(live_ids(fleet_config, store)) == wanted
            assert len(nginx.current()) == wanted
            load.wait_requests(40)
        assert actions.scale(OPERATOR, "web", 2).result == "noop"

        before_restart = live_ids(fleet_config, store)
        pids_before = {r.instance_id: r.pid for r in LocalOrchestrator(fleet_config, store).list(
            fleet_config.service("web"))}
        rolled = actions.rolling_restart(OPERATOR, "web")
        assert rolled.ok, rolled.detail
        assert rolled.after["restarted"] == before_restart
        pids_after = {r.instance_id: r.pid for r in LocalOrchestrator(fleet_config, store).list(
            fleet_config.service("web"))}
        assert set(pids_after.values()).isdisjoint(pids_before.values()), "rolling restart left a process"
        # the message and the audit name every replacement as it happened (id and address), not the old names
        replaced = rolled.after["replaced_by"]
        assert list(replaced) == before_restart
        assert sorted(new.split(" ")[0] for new in replaced.values()) == sorted(live_ids(fleet_config, store))
        for old, new in replaced.items():
            assert f"{old} → {new}" in rolled.detail, rolled.detail
        load.wait_requests(60)
    report = load.report
    print(report.summary())
    assert report.sent > 500, report.summary()
    assert report.non_2xx == 0, report.summary()
    assert report.transport == 0, report.summary()
    assert report.closed_on_reuse == 0, report.summary()

    audit_rows = store.audit(op_id=rolled.op_id)
    assert [row.result for row in audit_rows] == ["started", "ok"]
    assert audit_rows[-1].after.get("replaced_by") == rolled.after["replaced_by"]


def test_negative_control_kill_9_under_load_drops_requests(fleet_config: FleetConfig, store: Store) -> None:
    """The same load and client see failures when a replica dies with requests in flight."""
    service = fleet_config.service("web")
    victim = next(r for r in LocalOrchestrator(fleet_config, store).list(service) if r.state in LIVE_STATES)
    assert victim.pid is not None
    with PostLoad("127.0.0.1", lb_port(fleet_config), "/work/echo?ms=300", rate=60, workers=24) as load:
        load.wait_requests(60)
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.5)
        load.wait_requests(30)
    report = load.report
    print(report.summary())
    assert report.failed > 0, f"kill -9 under load dropped nothing — the test cannot see drops: {report.summary()}"
    # leave the module's fleet whole for anyone after us
    LocalOrchestrator(fleet_config, store).list(service)  # marks the victim dead
    store.remove_replica(service.name, victim.instance_id)
