"""`fleetdeck up/status/down` end to end: the real CLI, the real sample app, Postgres, Redis and nginx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from actions.fleet import ensure_database
from actions.own_processes import Dashboard
from core.config import load_config
from core.process import pid_alive
from core.store import Store
from tests.support import PG_ADMIN_DSN, REPO_ROOT, cli_roles_for_this_user, free_port, free_port_block, unique_name

FLEETDECK = os.path.join(REPO_ROOT, "fleetdeck")
SAMPLE_APP = Path(REPO_ROOT) / "compose" / "sampleapp" / "app.py"


def write_config(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str, command: str | None = None) -> Path:
    data = {
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{
            "name": "web",
            "backend": "local",
            "command": command or "{python} {root}/compose/sampleapp/app.py --port {port} --instance-id {instance_id}",
            "env": {"DATABASE_URL": pg_dsn, "REDIS_URL": redis_url, "BULLMQ_PREFIX": redis_prefix,
                    "SESSION_STORE": "postgres"},
            "ports": {"start": (start := free_port_block(4)), "end": start + 3},
            "replicas": 2, "min_replicas": 1, "max_replicas": 4,
            "stop_grace_s": 10, "boot_timeout_s": 30,
        }],
        "load_balancer": {"service": "web", "listen": f"127.0.0.1:{free_port()}", "worker_processes": 1,
                          "worker_shutdown_timeout_s": 5},
        "dashboard": {"port": free_port()},
        "auth": {"cli_roles": cli_roles_for_this_user("admin")},  # up needs an operator, down an admin
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fleetdeck(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETDECK, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def recorded_pids(config_file: Path) -> list[int]:
    config = load_config(config_file)
    pids = [r.pid for r in Store(config.store_url).replicas() if r.pid]
    nginx_pid = config.state_path / "nginx" / "nginx.pid"
    if nginx_pid.exists():
        pids.append(int(nginx_pid.read_text()))
    return pids


@pytest.fixture
def fleet_file(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Path]:
    path = write_config(tmp_path, pg_dsn, redis_url, redis_prefix)
    yield path
    leftovers = [pid for pid in recorded_pids(path) if pid_alive(pid)]
    if leftovers:  # a failed test must not leave processes behind: stop them the supported way
        fleetdeck(path, "down")


def test_up_twice_status_down(fleet_file: Path) -> None:
    first = fleetdeck(fleet_file, "up", "--no-dashboard")
    assert first.returncode == 0, first.stdout + first.stderr
    config = load_config(fleet_file)
    assert config.load_balancer is not None
    app_url = f"http://{config.load_balancer.listen}"
    assert f"app:       {app_url}" in first.stdout
    pids_after_first = sorted(recorded_pids(fleet_file))

    second = fleetdeck(fleet_file, "up", "--no-dashboard")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "web: 2 replica(s) running, starting 0" in second.stdout
    assert "already serves 2 server(s)" in second.stdout
    assert sorted(recorded_pids(fleet_file)) == pids_after_first, "a second up must adopt, not duplicate"

    shown = fleetdeck(fleet_file, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    replicas = state["services"]["web"]["replicas"]
    assert [(r["instance_id"], r["state"], r["health"]) for r in replicas] == [
        ("web-1", "running", "pass"), ("web-2", "running", "pass")
    ]
    assert state["nginx"]["running"] and state["nginx"]["generation"] == 1 == state["nginx"]["served_generation"]
    assert sorted(s["address"] for s in state["nginx"]["servers"]) == sorted(r["address"] for r in replicas)

    # the app answers through nginx, and nginx spreads POSTs over both replicas
    seen = set()
    for _ in range(6):
        request = urllib.request.Request(f"{app_url}/work/echo", data=b'{"n": 1}', method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            seen.add(response.headers.get("X-Instance-Id") or json.loads(response.read()).get("instanceId"))
    assert seen == {"web-1", "web-2"}

    human = fleetdeck(fleet_file, "status")
    assert human.returncode == 0 and "web-1" in human.stdout and "2/2 running" in human.stdout

    pids = recorded_pids(fleet_file)
    stopped = fleetdeck(fleet_file, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert Store(config.store_url).replicas() == []
    assert not (config.state_path / "nginx" / "nginx.pid").exists()
    after = json.loads(fleetdeck(fleet_file, "status", "--json").stdout)
    assert after["services"]["web"]["replicas"] == [] and not after["nginx"]["running"]


def test_up_reports_a_replica_that_cannot_start(tmp_path: Path, pg_dsn: str, redis_url: str,
                                                 redis_prefix: str) -> None:
    command = "{python} -c \"print('boom-marker', flush=True); raise SystemExit(3)\" {port} {instance_id}"
    path = write_config(tmp_path, pg_dsn, redis_url, redis_prefix, command=command)
    result = fleetdeck(path, "up", "--no-dashboard")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr and "boom-marker" in result.stderr
    assert Store(load_config(path).store_url).replicas() == []  # the failed replica is not left recorded


def test_up_refuses_a_busy_listen_port(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str) -> None:
    import socket

    path = write_config(tmp_path, pg_dsn, redis_url, redis_prefix)
    listen = load_config(path).load_balancer
    assert listen is not None
    host, port = listen.listen.rsplit(":", 1)
    with socket.socket() as blocker:
        blocker.bind((host, int(port)))
        blocker.listen()
        result = fleetdeck(path, "up", "--no-dashboard")
    assert result.returncode == 1 and "in use by another program" in result.stderr
    assert Store(load_config(path).store_url).replicas() == []  # refused before starting anything


def test_ensure_database_creates_a_missing_one() -> None:
    name = unique_name("fddemo")
    dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    try:
        assert ensure_database(dsn) is True
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select current_database()").fetchone() == (name,)
        assert ensure_database(dsn) is False
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_dashboard_process_lifecycle(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str) -> None:
    """A tiny Streamlit app stands in for the dashboard: started once, adopted, answers health, stopped by PID."""
    app = tmp_path / "board.py"
    app.write_text("import streamlit as st\nst.write('fleetdeck test board')\n")
    config = load_config(write_config(tmp_path, pg_dsn, redis_url, redis_prefix))
    board = Dashboard(config, app)
    try:
        pid = board.start(timeout_s=60)
        assert board.healthy() and board.pid() == pid
        assert Dashboard(config, app).start() == pid, "a running dashboard is adopted, not started twice"
        assert board.status()["running"]
    finally:
        pid = board.pid()
        board.stop()
    assert pid and not pid_alive(pid)
    assert not board.pid_path.exists()
    if pid_alive(pid):  # belt and braces: never leave streamlit running
        os.killpg(pid, signal.SIGKILL)
