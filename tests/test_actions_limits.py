"""The admin action "change limits" against the real store (Postgres) and, where the logic needs running
replicas, a small real fleet (two sample-app replicas, no load balancer so scaling stays quick): only admins may
change limits, refusals are audited, bad values are refused with the problem named, the same limits is a no-op,
and scale, plan_scale, `fleet up`'s desired count and the dashboard all use the effective limits."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from actions import fleet
from actions.auth import Principal
from actions.backends.base import LIVE_STATES
from actions.backends.local import LocalOrchestrator
from actions.operations import FleetActions, OperationResult, effective_limits, limits_key, limits_of
from core.config import FleetConfig
from core.store import Store
from tests.support import REPO_ROOT, free_port, free_port_block
from tests.support_load import action_fleet_config, running_fleet, written_config

ADMIN = Principal("ada", "admin", "dashboard")
OPERATOR = Principal("alice", "operator", "dashboard")
VIEWER = Principal("victor", "viewer", "dashboard")
# Names no other test module uses: the session's Postgres store (limits:*, desired:*, replicas) is shared.
SERVICE = f"lim-{uuid.uuid4().hex[:6]}"
IDLE = f"{SERVICE}-idle"  # a service with no replica running (as if the fleet were down)


@pytest.fixture(scope="module")
def fleet_setup(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str,
                redis_url: str) -> Iterator[tuple[FleetConfig, Path]]:
    base = tmp_path_factory.mktemp("limits")
    data = action_fleet_config(str(base), pg_dsn, redis_url, f"fdt-{SERVICE}", free_port_block(10), free_port(),
                               replicas=2, min_replicas=1, max_replicas=2)
    data.pop("load_balancer")  # no nginx: scaling is start/stop only, and the bounds logic is all that is tested
    web = data["services"][0]  # type: ignore[index]
    web["name"] = SERVICE
    idle = {**web, "name": IDLE, "replicas": 0, "min_replicas": 0, "max_replicas": 4,
            "ports": {"start": web["ports"]["start"], "end": web["ports"]["start"] + 4}}
    data["services"] = [web, idle]
    data["auth"] = {"cli_roles": {"*": "viewer"}}  # the CLI refusal below is about the role
    config, config_file = written_config(base, data)
    with running_fleet(config):
        yield config, config_file


@pytest.fixture(scope="module")
def config(fleet_setup: tuple[FleetConfig, Path]) -> FleetConfig:
    return fleet_setup[0]


@pytest.fixture(scope="module")
def store(config: FleetConfig) -> Iterator[Store]:
    store = Store(config.store_url)
    yield store
    store.close()


@pytest.fixture
def actions(config: FleetConfig, store: Store) -> Iterator[FleetActions]:
    yield FleetActions(config, store)
    # every test starts from the config's limits
    for name in (SERVICE, IDLE):
        store.delete_kv(limits_key(name))


def live_ids(config: FleetConfig, store: Store) -> list[str]:
    replicas = LocalOrchestrator(config, store).list(config.service(SERVICE))
    return sorted(r.instance_id for r in replicas if r.state in LIVE_STATES)


def audited(store: Store, result: OperationResult) -> list[tuple[str, str, str]]:
    return [(row.who, row.role, row.result) for row in store.audit(op_id=result.op_id)]


def test_viewer_and_operator_may_not_change_limits(store: Store, actions: FleetActions) -> None:
    for principal in (VIEWER, OPERATOR):
        result = actions.set_limits(principal, SERVICE, 1, 2)
        assert result.refused and "permission denied" in result.detail and "admin role" in result.detail, result.detail
        assert audited(store, result) == [(principal.name, principal.role, "refused")]
        assert result.action == "set_limits" and store.audit(op_id=result.op_id)[0].params["max_replicas"] == 2
        plan = actions.plan_set_limits(SERVICE, 1, 2, principal)
        assert not plan.allowed and "permission denied" in plan.reason
    assert (store.get_kv(limits_key(SERVICE)) or {}) == {}


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        ("one", 2, "--min must be a whole number, got 'one'"),
        (1, "2.5", "--max must be a whole number, got '2.5'"),
        (-1, 2, "--min must be at least 0, got -1"),
        (2, 1, "--min (2) must be <= --max (1)"),
        (0, 0, "--max must be at least 1, got 0"),
        (1, 11, "--max (11) exceeds the port range"),
        # two replicas run: limits that exclude 2 are refused, telling the admin to scale first
        (1, 1, f"'{SERVICE}' runs 2 replica(s), outside the new limits [1, 1]; scale it to within them first"),
        (3, 5, f"runs 2 replica(s), outside the new limits [3, 5]; scale it to within them first (`fleetdeck scale"
               f" {SERVICE} 3`)"),
    ],
)
def test_invalid_limits_are_refused_naming_the_problem(config: FleetConfig, store: Store, actions: FleetActions,
                                                       low: object, high: object, message: str) -> None:
    result = actions.set_limits(ADMIN, SERVICE, low, high)  # type: ignore[arg-type]
    assert result.refused and message in result.detail, result.detail
    assert audited(store, result) == [("ada", "admin", "refused")]
    assert (store.get_kv(limits_key(SERVICE)) or {}) == {}
    assert effective_limits(store, config.service(SERVICE)) == (1, 2)
    plan = actions.plan_set_limits(SERVICE, low, high, ADMIN)  # type: ignore[arg-type]
    assert not plan.allowed and message in plan.reason


def test_unknown_service_is_refused(store: Store, actions: FleetActions) -> None:
    result = actions.set_limits(ADMIN, "nope", 1, 2)
    assert result.refused and "unknown service 'nope'" in result.detail
    assert audited(store, result) == [("ada", "admin", "refused")]


def test_admin_sets_limits_and_scale_keeps_within_them(config: FleetConfig, store: Store,
                                                       actions: FleetActions) -> None:
    plan = actions.plan_set_limits(SERVICE, 1, 3, ADMIN)
    assert plan.allowed and not plan.noop and plan.disruptive and plan.confirm_text == SERVICE
    assert "[1, 2] (from the config (min_replicas, max_replicas)) → [1, 3]" in plan.reason, plan.reason

    result = actions.set_limits(ADMIN, SERVICE, 1, 3)
    assert result.ok and result.result == "ok", result.detail
    assert [row.result for row in store.audit(op_id=result.op_id)] == ["started", "ok"]
    record = store.get_kv(limits_key(SERVICE))
    assert record is not None and set(record) == {"min_replicas", "max_replicas", "by", "ts"}
    assert (record["min_replicas"], record["max_replicas"], record["by"]) == (1, 3, "ada")
    assert result.after["previous_limits"]["source"] == "config"
    limits = limits_of(store, config.service(SERVICE))
    assert (limits.min_replicas, limits.max_replicas, limits.source, limits.by) == (1, 3, "override", "ada")

    beyond = actions.scale(OPERATOR, SERVICE, 4)
    assert beyond.refused and f"N=4 is outside '{SERVICE}' bounds [1, 3]" in beyond.detail, beyond.detail
    assert "override set by ada" in beyond.detail
    assert not actions.plan_scale(SERVICE, 4, OPERATOR).allowed
    assert live_ids(config, store) == [f"{SERVICE}-1", f"{SERVICE}-2"]

    # 3 is above the config's max_replicas (2) but within the override: the backend's own guard must agree
    assert actions.plan_scale(SERVICE, 3, OPERATOR).allowed
    up = actions.scale(OPERATOR, SERVICE, 3)
    assert up.ok, up.detail
    assert live_ids(config, store) == [f"{SERVICE}-1", f"{SERVICE}-2", f"{SERVICE}-3"]
    # with 3 running, limits that exclude 3 are refused until someone scales down
    assert "runs 3 replica(s)" in actions.set_limits(ADMIN, SERVICE, 1, 2).detail
    down = actions.scale(OPERATOR, SERVICE, 2)
    assert down.ok, down.detail
    assert live_ids(config, store) == [f"{SERVICE}-1", f"{SERVICE}-2"]


def test_same_limits_is_a_noop(store: Store, actions: FleetActions) -> None:
    # the config's own limits, with no override: nothing to record
    same_as_config = actions.set_limits(ADMIN, SERVICE, 1, 2)
    assert same_as_config.ok and same_as_config.result == "noop", same_as_config.detail
    assert (store.get_kv(limits_key(SERVICE)) or {}) == {}
    assert actions.plan_set_limits(SERVICE, 1, 2, ADMIN).noop

    assert actions.set_limits(ADMIN, SERVICE, 2, 4).result == "ok"
    recorded = store.get_kv(limits_key(SERVICE))
    again = actions.set_limits(ADMIN, SERVICE, "2", "4")
    assert again.ok and again.result == "noop" and "no-op" in again.detail, again.detail
    assert [row.result for row in store.audit(op_id=again.op_id)] == ["started", "noop"]
    assert store.get_kv(limits_key(SERVICE)) == recorded, "a no-op rewrote the override"


def test_the_configs_own_bounds_remove_the_override(config: FleetConfig, store: Store,
                                                    actions: FleetActions) -> None:
    assert actions.set_limits(ADMIN, SERVICE, 1, 3).result == "ok"
    assert limits_of(store, config.service(SERVICE)).source == "override"
    reset = actions.set_limits(ADMIN, SERVICE, 1, 2)  # the file says [1, 2]
    assert reset.ok and reset.result == "ok" and "the config's [1, 2]" in reset.detail, reset.detail
    assert store.get_kv(limits_key(SERVICE)) is None, "the override must be gone, not rewritten"
    assert limits_of(store, config.service(SERVICE)).source == "config"
    assert [row.result for row in store.audit(op_id=reset.op_id)] == ["started", "ok"]


def test_fleet_up_desired_count_respects_the_limits(config: FleetConfig, store: Store,
                                                    actions: FleetActions) -> None:
    idle = config.service(IDLE)
    assert fleet.desired_replicas(store, idle) == 0  # the config's replicas
    # nothing runs, so there is no current count to conflict with: the limits may exclude 0
    result = actions.set_limits(ADMIN, IDLE, 2, 3)
    assert result.ok, result.detail
    assert fleet.desired_replicas(store, idle) == 2, "`up` would start fewer than the new min"
    store.put_kv(f"desired:{IDLE}", {"replicas": 4})  # a scale chosen before the limits shrank
    assert fleet.desired_replicas(store, idle) == 2
    store.put_kv(f"desired:{IDLE}", {"replicas": 3})
    assert fleet.desired_replicas(store, idle) == 3
    store.put_kv(limits_key(IDLE), {})
    assert fleet.desired_replicas(store, idle) == 3  # back to the config's [0, 4]
    store.put_kv(f"desired:{IDLE}", {})


def run_cli(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    return subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(config_file), *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_cli_shows_limits_and_refuses_a_viewer(fleet_setup: tuple[FleetConfig, Path], store: Store,
                                               actions: FleetActions) -> None:
    config, viewer_file = fleet_setup
    shown = run_cli(viewer_file, "limits", SERVICE)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"{SERVICE}: min 1, max 2 (from the config" in shown.stdout

    refused = run_cli(viewer_file, "limits", SERVICE, "--min", "1", "--max", "3", "--yes")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "permission denied" in refused.stderr and "change limits" in refused.stderr
    rows = [r for r in store.audit(action="set_limits") if r.params.get("via") == "cli"]
    assert [(r.role, r.result) for r in rows] == [("viewer", "refused")]
    assert effective_limits(store, config.service(SERVICE)) == (1, 2)

    data = yaml.safe_load(viewer_file.read_text())
    data["auth"] = {"cli_roles": {"*": "admin"}}
    admin_file = viewer_file.with_name("fleet-admin.yaml")
    admin_file.write_text(yaml.safe_dump(data))
    dry = run_cli(admin_file, "limits", SERVICE, "--max", "3", "--dry-run")  # --min defaults to the current 1
    assert dry.returncode == 0 and "→ [1, 3]" in dry.stdout, dry.stdout + dry.stderr
    bad = run_cli(admin_file, "limits", SERVICE, "--min", "3", "--max", "2", "--yes")
    assert bad.returncode == 3 and "--min (3) must be <= --max (2)" in bad.stderr, bad.stdout + bad.stderr
    assert effective_limits(store, config.service(SERVICE)) == (1, 2)

    raised = run_cli(admin_file, "limits", SERVICE, "--max", "3", "--yes")
    assert raised.returncode == 0 and effective_limits(store, config.service(SERVICE)) == (1, 3), raised.stderr
    mixed = run_cli(admin_file, "limits", SERVICE, "--reset", "--max", "4", "--yes")
    assert mixed.returncode == 3 and "takes no --min/--max" in mixed.stderr
    reset = run_cli(admin_file, "limits", SERVICE, "--reset", "--yes")
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert limits_of(store, config.service(SERVICE)).source == "config"


def service_panel(role: str) -> None:
    from actions.auth import Principal
    from core.config import load_config
    from core.store import Store
    from dashboard.action_panel import render_service_actions

    config = load_config()
    render_service_actions(config, Store(config.store_url), Principal("someone", role, "dashboard"), "web")


def test_dashboard_limits_control_is_admin_only_and_bounds_the_scale_input(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    start = free_port_block(8)
    data = {"state_dir": str(tmp_path / "run"), "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
            "services": [{"name": "web", "command": "{python} -c pass --port {port} {instance_id}",
                          "ports": {"start": start, "end": start + 7}, "replicas": 2, "min_replicas": 1,
                          "max_replicas": 4}]}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLEETDECK_CONFIG", str(path))
    Store(f"sqlite:///{tmp_path}/fleetdeck.db").put_kv(limits_key("web"), {"min_replicas": 2, "max_replicas": 3,
                                                                           "by": "ada", "ts": 0.0})

    operator = AppTest.from_function(service_panel, args=("operator",), default_timeout=30).run()
    assert not operator.exception, operator.exception
    scale_input = operator.number_input[0]
    assert scale_input.label == "Replicas (2–3)" and (scale_input.min, scale_input.max) == (2, 3)
    assert next(b for b in operator.button if b.label == "Limits").disabled

    admin = AppTest.from_function(service_panel, args=("admin",), default_timeout=30).run()
    assert not admin.exception, admin.exception
    inputs = {n.label: n for n in admin.number_input}
    assert inputs["Min replicas"].value == 2 and inputs["Max replicas"].value == 3
    inputs["Max replicas"].set_value(4)
    next(b for b in admin.button if b.label == "Limits").click()
    admin.run()
    assert not admin.exception, admin.exception
    preview = re.sub(r"\\(.)", r"\1", " ".join(i.value for i in admin.info))  # Markdown-escaped: unescape
    assert "Dry run — set_limits web" in preview and "→ [2, 4]" in preview, preview
    assert any(t.label.startswith("Type **web**") for t in admin.text_input)
