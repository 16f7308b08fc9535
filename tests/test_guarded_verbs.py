"""Every state-changing verb outside FleetActions checks the role and leaves an audit row, refusals included:
fleet up/down (API and CLI), test runs (start, cancel). Logins: tests/test_login_guard.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from actions import fleet
from actions.auth import PermissionDenied, Principal
from actions.proving import testruns
from core.config import FleetConfig, parse_config
from core.store import Store
from tests.support import REPO_ROOT, free_port, free_port_block

VIEWER = Principal("vic", "viewer", "cli")
OPERATOR = Principal("olga", "operator", "cli")
ADMIN = Principal("ann", "admin", "cli")


def idle_config(tmp_path: Path, cli_roles: dict[str, str] | None = None) -> tuple[FleetConfig, Path]:
    """A fleet with nothing to start (0 replicas, no nginx): up and down only check, audit and return."""
    start = free_port_block(2)
    data = {
        "state_dir": str(tmp_path / "run"),
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{"name": "web", "command": "{python} -c pass {port} {instance_id}",
                      "ports": {"start": start, "end": start + 1}, "replicas": 0, "min_replicas": 0,
                      "max_replicas": 1, "min_healthy": 0}],
        "dashboard": {"port": free_port()},
        "auth": {"cli_roles": cli_roles or {"*": "viewer"}},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data, str(path), tmp_path), path


def rows(store: Store, action: str) -> list[tuple[str, str, str]]:
    return [(a.who, a.role, a.result) for a in store.audit(action=action)]


def test_fleet_up_and_down_check_the_role_and_are_audited(tmp_path: Path) -> None:
    config, _ = idle_config(tmp_path)
    store = Store(config.store_url)
    with pytest.raises(PermissionDenied):
        fleet.up(config, principal=VIEWER, dashboard=False)
    with pytest.raises(PermissionDenied):
        fleet.down(config, principal=OPERATOR)  # down takes every replica away: admin only
    fleet.up(config, principal=OPERATOR, dashboard=False)
    fleet.down(config, principal=ADMIN)
    assert rows(store, "fleet_up") == [("vic", "viewer", "refused"), ("olga", "operator", "started"),
                                       ("olga", "operator", "ok")]
    assert rows(store, "down") == [("olga", "operator", "refused"), ("ann", "admin", "started"),
                                         ("ann", "admin", "ok")]
    refused = store.audit(action="down")[0]
    assert "admin" in (refused.error or "") and refused.params["via"] == "cli"


def test_cli_down_as_a_viewer_is_refused_and_audited(tmp_path: Path) -> None:
    config, path = idle_config(tmp_path, {"*": "viewer"})
    done = subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(path), "down"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3 and "refused" in done.stderr and "admin" in done.stderr, done.stderr
    audited = Store(config.store_url).audit(action="down")
    assert [(a.role, a.result) for a in audited] == [("viewer", "refused")]


def test_test_runs_and_cancels_check_the_role_and_are_audited(tmp_path: Path) -> None:
    config, _ = idle_config(tmp_path)
    store = Store(config.store_url)
    with pytest.raises(PermissionDenied):
        testruns.start(config, store, VIEWER, "load", {"duration_s": 1})
    with pytest.raises(PermissionDenied):
        testruns.execute(config, store, VIEWER, "load", {"duration_s": 1})
    with pytest.raises(PermissionDenied):
        testruns.request_cancel(store, "load-x", VIEWER)
    assert store.get_kv(testruns.cancel_key("load-x")) is None  # the refused cancel changed nothing
    testruns.request_cancel(store, "load-x", OPERATOR)
    assert store.get_kv(testruns.cancel_key("load-x"))["by"] == "olga"  # type: ignore[index]
    assert rows(store, "start_test") == [("vic", "viewer", "refused"), ("vic", "viewer", "refused")]
    assert rows(store, "stop_test") == [("vic", "viewer", "refused"), ("olga", "operator", "started"),
                                        ("olga", "operator", "ok")]
