"""The operations' rules on in-memory fakes (tests/fakes.py): bounds, min_healthy, locks, permissions, audit,
rollback, idempotency, and the registry the CLI and the dashboard iterate. Fast tier: no services.

The same operations run against real replicas behind a real nginx in tests/test_actions_*.py (integration tier).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.auth import Principal
from actions.backends.base import DOWN, DRAINING, UP, UpstreamServer
from actions.operations import OPERATIONS, FleetActions, Health, limits_key, operations_for
from tests.fakes import FakeBalancer, FakeHealth, FakeOrchestrator, MemoryOpsStore, fast_config

pytestmark = pytest.mark.fast

OPERATOR = Principal("alice", "operator", "cli")
ADMIN = Principal("root", "admin", "cli")
VIEWER = Principal("victor", "viewer", "dashboard")


class Fleet:
    """Three replicas in rotation behind the fake balancer."""

    def __init__(self, tmp_path: Path, **service: object) -> None:
        self.config = fast_config(str(tmp_path), **service)
        self.service = self.config.service("web")
        self.store = MemoryOpsStore()
        self.orchestrator = FakeOrchestrator()
        replicas = self.orchestrator.seed(self.service, 3)
        self.balancer = FakeBalancer([UpstreamServer(r.address, UP, r.instance_id) for r in replicas])
        self.health = FakeHealth()
        self.actions = FleetActions(self.config, self.store, orchestrator=self.orchestrator,
                                    balancer=self.balancer, health_probe=self.health)

    def upstream(self) -> dict[str, str]:
        return {s.instance_id: s.state for s in self.balancer.current()}

    def results(self, op_id: str) -> list[str]:
        return [entry.result for entry in self.store.audit(op_id=op_id)]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_drain_takes_the_instance_down_audits_and_unlocks(fleet: Fleet) -> None:
    plan = fleet.actions.plan_drain("web-2", OPERATOR)
    assert plan.allowed and plan.upstream_diff == [f"~ {fleet.balancer.servers[1].address} web-2 up → web-2 draining"]
    result = fleet.actions.drain(OPERATOR, "web-2")
    assert result.ok and result.result == "ok", result.detail
    assert fleet.upstream() == {"web-1": UP, "web-2": DOWN, "web-3": UP}
    assert fleet.results(result.op_id) == ["started", "ok"]
    assert [line.details["step"] for line in fleet.store.progress(result.op_id)][:2] == ["apply", "applied"]
    assert fleet.store.locks() == []
    # draining it again changes nothing
    again = fleet.actions.drain(OPERATOR, "web-2")
    assert again.result == "noop" and fleet.balancer.gen == 3


def test_drain_refused_when_it_would_leave_too_few_serving(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, min_healthy=3)
    result = fleet.actions.drain(OPERATOR, "web-1")
    assert result.refused and "min_healthy is 3" in result.detail
    assert fleet.upstream() == {"web-1": UP, "web-2": UP, "web-3": UP} and fleet.balancer.applied == []
    assert fleet.results(result.op_id) == ["refused"]
    assert not fleet.actions.plan_drain("web-1", OPERATOR).allowed


def test_drain_waits_for_in_flight_then_aborts_back_into_rotation(fleet: Fleet) -> None:
    fleet.health.answers["web-2"] = Health("pass", 4, False)  # never goes idle
    result = fleet.actions.drain(OPERATOR, "web-2", timeout_s=0.5)
    assert result.result == "failed" and "in-flight 4" in result.detail
    assert fleet.upstream()["web-2"] == UP  # the operator did not ask to cut requests


def test_scale_up_joins_only_healthy_replicas_and_scale_down_stops_the_newest(fleet: Fleet) -> None:
    up = fleet.actions.scale(OPERATOR, "web", 4)
    assert up.ok, up.detail
    assert sorted(fleet.upstream()) == ["web-1", "web-2", "web-3", "web-4"]
    assert fleet.store.get_kv("desired:web") is not None and fleet.store.get_kv("desired:web")["replicas"] == 4
    down = fleet.actions.scale(OPERATOR, "web", 2)
    assert down.ok, down.detail
    assert sorted(fleet.upstream()) == ["web-1", "web-2"]
    assert ("stop", "web-4") in fleet.orchestrator.calls and ("stop", "web-3") in fleet.orchestrator.calls


def test_a_scale_down_is_ok_when_only_removing_the_stopped_replicas_from_the_upstream_fails(fleet: Fleet) -> None:
    fleet.balancer.reject_after = 1  # the apply that drains them goes through, the one after they stopped does not
    result = fleet.actions.scale(OPERATOR, "web", 1)
    # the count is reached, and nginx kept the generation where they are out of rotation: no request reaches them
    assert result.ok and result.result == "ok", result.detail
    assert [r.instance_id for r in fleet.orchestrator.live(fleet.service)] == ["web-1"]
    assert fleet.upstream() == {"web-1": UP, "web-2": DRAINING, "web-3": DRAINING}
    assert "removing them failed" in result.detail and "nginx -t: invalid parameter" in result.detail
    assert fleet.results(result.op_id) == ["started", "ok"] and fleet.store.get_kv("desired:web")["replicas"] == 1
    assert any(p.details["step"] == "apply_failed" for p in fleet.store.progress(result.op_id))


def test_scale_up_rolls_back_a_replica_that_never_becomes_healthy(fleet: Fleet) -> None:
    fleet.orchestrator.unhealthy_next = True
    result = fleet.actions.scale(OPERATOR, "web", 4)
    assert result.result == "failed" and "EADDRINUSE" in result.detail  # the log tail reaches the operator
    assert sorted(fleet.upstream()) == ["web-1", "web-2", "web-3"]
    assert len(fleet.orchestrator.live(fleet.service)) == 3


@pytest.mark.parametrize("wanted", ["0", "6", "three", True])
def test_scale_outside_the_bounds_or_not_a_number_is_refused(fleet: Fleet, wanted: object) -> None:
    result = fleet.actions.scale(OPERATOR, "web", wanted)  # type: ignore[arg-type]
    assert result.refused and fleet.orchestrator.calls == [("start", f"web-{n}") for n in (1, 2, 3)]


def test_limits_override_then_reset(fleet: Fleet) -> None:
    assert fleet.actions.set_limits(OPERATOR, "web", 1, 6).refused  # admin only
    assert fleet.actions.set_limits(ADMIN, "web", 2, 6).ok
    assert fleet.actions.scale(OPERATOR, "web", 6).ok  # above the config's max of 5, within the override
    assert fleet.actions.set_limits(ADMIN, "web", 1, 5).refused  # 6 running: outside the new bounds
    assert fleet.actions.scale(OPERATOR, "web", 3).ok
    reset = fleet.actions.set_limits(ADMIN, "web", 1, 5)
    assert reset.ok and fleet.store.get_kv(limits_key("web")) is None


def test_a_held_lock_refuses_with_who_holds_it(fleet: Fleet) -> None:
    fleet.store.acquire_lock("web", "scale", "bob", "other-op", 60)
    result = fleet.actions.restart(OPERATOR, "web-1")
    assert result.refused and result.detail.startswith("busy: scale by bob")
    assert fleet.orchestrator.calls == [("start", f"web-{n}") for n in (1, 2, 3)]


def test_a_viewer_is_refused_and_the_refusal_is_audited(fleet: Fleet) -> None:
    result = fleet.actions.undrain(VIEWER, "web-1")
    assert result.refused and "permission denied" in result.detail
    assert [(e.who, e.result) for e in fleet.store.audit()] == [("victor", "refused")]


def test_a_rejected_upstream_fails_the_drain_and_keeps_the_old_one(fleet: Fleet) -> None:
    fleet.balancer.reject = True
    result = fleet.actions.drain(OPERATOR, "web-1")
    assert result.result == "failed" and "nginx -t" in result.detail
    assert fleet.upstream() == {"web-1": UP, "web-2": UP, "web-3": UP} and fleet.store.locks() == []


def test_rolling_restart_replaces_every_replica(fleet: Fleet) -> None:
    result = fleet.actions.rolling_restart(OPERATOR, "web")
    assert result.ok, result.detail
    assert result.after["restarted"] == ["web-1", "web-2", "web-3"]
    assert sorted(fleet.upstream().values()) == [UP, UP, UP]
    assert len(fleet.orchestrator.live(fleet.service)) == 3


def test_resubmitting_an_op_id_replays_its_outcome(fleet: Fleet) -> None:
    first = fleet.actions.scale(OPERATOR, "web", 4, op_id="op-fixed")
    again = fleet.actions.scale(OPERATOR, "web", 5, op_id="op-fixed")
    assert first.ok and again.ok and again.detail.startswith("already done (op op-fixed)")
    assert len(fleet.orchestrator.live(fleet.service)) == 4


def test_the_registry_runs_each_operation_from_its_parameters(fleet: Fleet) -> None:
    assert [op.name for op in operations_for("instance")] == ["drain", "undrain", "restart"]
    assert [op.name for op in operations_for("service")] == ["scale", "rolling_restart", "set_limits"]
    plan = OPERATIONS["scale"].plan(fleet.actions, "web", {"replicas": 4}, OPERATOR)
    assert plan.allowed and plan.affected == ["+1 new"]
    result = OPERATIONS["drain"].execute(fleet.actions, OPERATOR, "web-3", {"on_timeout": "abort"})
    assert result.ok and fleet.upstream()["web-3"] == DOWN
