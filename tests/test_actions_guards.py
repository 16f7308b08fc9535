"""Guard rails of the actions against a real fleet (sample-app replicas behind a managed nginx):
a render nginx -t rejects is rolled back; one action per service at a time; roles enforced in the actions layer
and on the CLI; bad input refused with nothing changed; every refusal audited."""

from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from actions.auth import Principal
from actions.backends.base import LIVE_STATES, UP, UpstreamServer
from actions.backends.local import LocalOrchestrator
from actions.backends.nginx import ManagedNginx
from actions.operations import FleetActions, OperationResult
from core.config import FleetConfig
from core.store import Store
from tests.support import REPO_ROOT, free_port, free_port_block, unique_name
from tests.support_load import action_fleet_config, running_fleet, written_config

OPERATOR = Principal("alice", "operator", "dashboard")
OTHER_OPERATOR = Principal("bob", "operator", "dashboard")
VIEWER = Principal("victor", "viewer", "dashboard")


@pytest.fixture(scope="module")
def fleet_setup(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, redis_url: str) -> Iterator[tuple[FleetConfig,
                                                                                                          Path]]:
    base = tmp_path_factory.mktemp("guards")
    data = action_fleet_config(str(base), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10), free_port())
    # the CLI runs as this OS user: map everyone to viewer so the CLI refusal is about the role
    data["auth"] = {"cli_roles": {"*": "viewer"}}
    config, config_file = written_config(base, data)
    with running_fleet(config):
        yield config, config_file


@pytest.fixture(scope="module")
def config(fleet_setup: tuple[FleetConfig, Path]) -> FleetConfig:
    return fleet_setup[0]


@pytest.fixture(scope="module")
def store(config: FleetConfig) -> Store:
    return Store(config.store_url)


@pytest.fixture
def actions(config: FleetConfig, store: Store) -> FleetActions:
    return FleetActions(config, store)


def lb_port(config: FleetConfig) -> int:
    assert config.load_balancer is not None
    return int(config.load_balancer.listen.rsplit(":", 1)[1])


def post(config: FleetConfig, ms: int = 0) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", lb_port(config), timeout=15)
    try:
        connection.request("POST", f"/work/echo?ms={ms}", body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def fleet_state(config: FleetConfig, store: Store) -> tuple[int, list[UpstreamServer], list[str]]:
    nginx = ManagedNginx(config, store)
    replicas = LocalOrchestrator(config, store).list(config.service("web"))
    return nginx.generation(), nginx.current(), sorted(r.instance_id for r in replicas if r.state in LIVE_STATES)


def audited(store: Store, result: OperationResult) -> list[tuple[str, str, str | None]]:
    return [(row.who, row.result, row.error) for row in store.audit(op_id=result.op_id)]


class RejectedNginx(ManagedNginx):
    """Renders an upstream nginx -t rejects (an invalid server parameter): the apply must roll back."""

    def render_upstream(self, servers: list[UpstreamServer]) -> str:
        return super().render_upstream(servers).replace("max_fails=", "max_fails=not-a-number ", 1)


def test_rejected_render_is_rolled_back_and_nginx_keeps_serving(config: FleetConfig, store: Store) -> None:
    generation, upstream, replicas = fleet_state(config, store)
    actions = FleetActions(config, store, balancer=RejectedNginx(config, store))
    result = actions.drain(OPERATOR, "web-1")
    assert not result.ok and result.result == "failed"
    assert "nginx -t" in result.detail
    assert fleet_state(config, store) == (generation, upstream, replicas)
    served = ManagedNginx(config, store).served_generation()
    assert served == generation, "nginx does not serve the last good generation"
    assert {s.instance_id: s.state for s in upstream}["web-1"] == UP
    statuses = [post(config)[0] for _ in range(9)]
    assert statuses == [200] * 9
    rows = store.audit(op_id=result.op_id)
    assert [r.result for r in rows] == ["started", "failed"]
    assert rows[-1].who == "alice" and rows[-1].role == "operator" and "nginx -t" in (rows[-1].error or "")
    assert store.get_kv(f"op:{result.op_id}")["state"] == "failed"
    assert store.locks() == [], "a failed action left its lock behind"


def test_second_action_on_a_busy_service_is_refused(config: FleetConfig, store: Store, actions: FleetActions) -> None:
    # Slow requests on every replica keep the drain waiting for in-flight work, so it holds the lock a while.
    slow = [threading.Thread(target=post, args=(config, 2500)) for _ in range(6)]
    for thread in slow:
        thread.start()
    time.sleep(0.3)
    outcome: dict[str, OperationResult] = {}
    drain = threading.Thread(target=lambda: outcome.setdefault("drain", actions.drain(OPERATOR, "web-3")))
    drain.start()
    deadline = time.monotonic() + 10
    while not store.locks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.locks(), "the drain never took the service lock"
    second = FleetActions(config, store).scale(OTHER_OPERATOR, "web", 4)
    drain.join(30)
    for thread in slow:
        thread.join(30)
    assert second.refused, second.detail
    assert second.detail.startswith("busy: drain by alice since "), second.detail
    assert audited(store, second) == [("bob", "refused", second.detail)]
    assert outcome["drain"].ok, outcome["drain"].detail
    assert outcome["drain"].after["drain_s"] >= 1.0, "the drain did not wait for the in-flight requests"
    assert fleet_state(config, store)[2] == ["web-1", "web-2", "web-3"], "the refused scale changed the fleet"
    assert actions.undrain(OPERATOR, "web-3").ok


def test_viewer_is_refused_through_the_api(config: FleetConfig, store: Store, actions: FleetActions) -> None:
    before = fleet_state(config, store)
    for result in (actions.drain(VIEWER, "web-1"), actions.scale(VIEWER, "web", 4),
                   actions.restart(VIEWER, "web-2"), actions.rolling_restart(VIEWER, "web"),
                   actions.undrain(VIEWER, "web-1")):
        assert result.refused and "permission denied" in result.detail, result.detail
        rows = store.audit(op_id=result.op_id)
        assert [(r.who, r.role, r.result) for r in rows] == [("victor", "viewer", "refused")]
    assert fleet_state(config, store) == before


def test_operator_cannot_force_a_drain(actions: FleetActions, store: Store) -> None:
    result = actions.drain(OPERATOR, "web-1", on_timeout="force")
    assert result.refused and "permission denied" in result.detail


def run_cli(config_file: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    return subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(config_file), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_viewer_is_refused_on_the_cli_and_audited(fleet_setup: tuple[FleetConfig, Path], store: Store) -> None:
    config, config_file = fleet_setup
    before = fleet_state(config, store)
    started = time.time()
    result = run_cli(config_file, "drain", "web-1", "--yes")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "permission denied" in result.stderr
    rows = [r for r in store.audit(start=started, action="drain") if r.params.get("via") == "cli"]
    assert [r.result for r in rows] == ["refused"] and rows[0].role == "viewer"
    assert fleet_state(config, store) == before
    dry = run_cli(config_file, "scale", "web", "4", "--dry-run")
    assert dry.returncode == 3 and "REFUSED" in dry.stdout, dry.stdout + dry.stderr


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.scale(OPERATOR, "web", 0), "outside 'web' bounds [1, 6]"),
        (lambda a: a.scale(OPERATOR, "web", 7), "outside 'web' bounds [1, 6]"),
        (lambda a: a.scale(OPERATOR, "web", "three"), "N must be a whole number"),
        (lambda a: a.scale(OPERATOR, "nope", 2), "unknown service 'nope'"),
        (lambda a: a.drain(OPERATOR, "web-99"), "unknown instance 'web-99'"),
        (lambda a: a.undrain(OPERATOR, "web-99"), "unknown instance 'web-99'"),
        (lambda a: a.restart(OPERATOR, "nope/web-1"), "unknown service 'nope'"),
        (lambda a: a.drain(OPERATOR, "web-1", timeout_s=-1), "--timeout must be within"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(config: FleetConfig, store: Store, actions: FleetActions,
                                                  call: object, message: str) -> None:
    before = fleet_state(config, store)
    result = call(actions)  # type: ignore[operator]
    assert result.refused and message in result.detail, result.detail
    assert audited(store, result) == [("alice", "refused", result.detail)]
    assert fleet_state(config, store) == before


def test_draining_the_last_healthy_replica_is_refused(config: FleetConfig, store: Store,
                                                      actions: FleetActions) -> None:
    assert actions.drain(OPERATOR, "web-1").ok
    assert actions.drain(OPERATOR, "web-2").ok
    try:
        before = fleet_state(config, store)
        result = actions.drain(OPERATOR, "web-3")
        assert result.refused and "would leave 0 healthy serving replica(s)" in result.detail, result.detail
        assert fleet_state(config, store) == before
        assert post(config)[0] == 200
        plan = actions.plan_drain("web-3", OPERATOR)
        assert not plan.allowed and "would leave 0" in plan.reason
    finally:
        assert actions.undrain(OPERATOR, "web-1").ok
        assert actions.undrain(OPERATOR, "web-2").ok
    plan = actions.plan_drain("web-2", OPERATOR)
    assert plan.allowed and plan.upstream_diff == [f"~ {plan.upstream_before[1]['address']} web-2 up → web-2 draining"]


def test_cli_operator_dry_run_confirm_drain_and_undrain(fleet_setup: tuple[FleetConfig, Path], store: Store,
                                                        tmp_path: Path) -> None:
    config, viewer_file = fleet_setup
    data = yaml.safe_load(viewer_file.read_text())
    data["auth"] = {"cli_roles": {"*": "operator"}}
    operator_file = viewer_file.with_name("fleet-operator.yaml")
    operator_file.write_text(yaml.safe_dump(data))
    generation = fleet_state(config, store)[0]

    dry = run_cli(operator_file, "drain", "web-1", "--dry-run")
    assert dry.returncode == 0 and "web-1 up → web-1 draining" in dry.stdout, dry.stdout + dry.stderr
    unconfirmed = run_cli(operator_file, "drain", "web-1")  # no terminal to type the name on, no --yes
    assert unconfirmed.returncode == 3 and "--yes" in unconfirmed.stderr
    assert fleet_state(config, store)[0] == generation, "a dry run or an unconfirmed drain changed nginx"

    drained = run_cli(operator_file, "drain", "web-1", "--yes")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "out of rotation" in drained.stdout and "drained in" in drained.stdout
    again = run_cli(operator_file, "drain", "web/web-1", "--yes")
    assert again.returncode == 0 and "no-op" in again.stdout, again.stdout + again.stderr
    undrained = run_cli(operator_file, "undrain", "web-1")
    assert undrained.returncode == 0, undrained.stdout + undrained.stderr
    assert {s.instance_id: s.state for s in fleet_state(config, store)[1]}["web-1"] == UP
    bad = run_cli(operator_file, "scale", "web", "many", "--yes")
    assert bad.returncode == 3 and "N must be a whole number" in bad.stderr

    hashed = run_cli(operator_file, "hash-password", stdin="correct horse\n")
    assert hashed.returncode == 0 and hashed.stdout.startswith("$argon2id$"), hashed.stdout + hashed.stderr
    from actions.auth import verify_password

    assert verify_password(hashed.stdout.strip(), "correct horse")


def test_drain_timeout_aborts_back_into_rotation_or_is_forced_by_an_admin(config: FleetConfig, store: Store,
                                                                          actions: FleetActions) -> None:
    admin = Principal("ada", "admin", "dashboard")
    for on_timeout, principal in (("abort", OPERATOR), ("force", admin)):
        slow = [threading.Thread(target=post, args=(config, 2500)) for _ in range(6)]  # round robin: all 3 busy
        for thread in slow:
            thread.start()
        time.sleep(0.3)
        result = actions.drain(principal, "web-1", timeout_s=0.8, on_timeout=on_timeout)  # type: ignore[arg-type]
        for thread in slow:
            thread.join(30)
        state = {s.instance_id: s.state for s in fleet_state(config, store)[1]}["web-1"]
        if on_timeout == "abort":
            assert not result.ok and "timed out" in result.detail and "aborted" in result.detail, result.detail
            assert state == UP
        else:
            assert result.ok and result.after["forced"] is True, result.detail
            assert state == "down"
    assert actions.undrain(OPERATOR, "web-1").ok
