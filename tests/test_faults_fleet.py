"""Faults injected into a running fleet for real (issue 17): kill -9 of fleetdeck's own processes, `down` while a
drain waits on a slow request. Real CLI, sample app, nginx, Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from actions.backends.base import Replica, UpstreamServer
from actions.backends.nginx import ManagedNginx
from actions.fleet import desired_upstream
from collectors.alerts import AlertEvaluator
from collectors.nginx import NginxCollector
from core.config import load_config
from core.nginx_procs import own_nginx_processes
from core.process import pid_alive, port_is_free, process_matches
from core.samples import Sample
from core.store import Store
from tests.support import REPO_ROOT, free_port, free_port_block

FLEETDECK_SCRIPT = os.path.join(REPO_ROOT, "fleetdeck")
DASHBOARD_APP = Path(REPO_ROOT) / "dashboard" / "app.py"
DEADLINE_S = 30.0


def write_fleet(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str, *, standalone_collector: bool,
                stop_grace_s: float = 10) -> Path:
    data = {
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{
            "name": "web",
            "backend": "local",
            "command": "{python} {root}/compose/sampleapp/app.py --port {port} --instance-id {instance_id}",
            "env": {"DATABASE_URL": pg_dsn, "REDIS_URL": redis_url, "BULLMQ_PREFIX": redis_prefix,
                    "SESSION_STORE": "postgres", "QUEUES": ""},
            "ports": {"start": (start := free_port_block(4)), "end": start + 3},
            "replicas": 2, "min_replicas": 1, "max_replicas": 4, "min_healthy": 1,
            "stop_grace_s": stop_grace_s, "boot_timeout_s": 30,
        }],
        "load_balancer": {"service": "web", "listen": f"127.0.0.1:{free_port()}", "worker_processes": 2,
                          "worker_shutdown_timeout_s": 3},
        "dashboard": {"port": free_port(), "embedded_collector": not standalone_collector},
        "collectors": {"instances_s": 2, "nginx_s": 2},
        "auth": {"cli_roles": {"*": "admin"}},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fleetdeck(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETDECK_SCRIPT, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_for(condition: object, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def collect_nginx(config_file: Path) -> list[Sample]:
    collector = NginxCollector(load_config(config_file))

    async def once() -> list[Sample]:
        try:
            return await collector.collect(collector.targets()[0])
        finally:
            await collector.aclose()

    return asyncio.run(once())


def nginx_of(config_file: Path) -> ManagedNginx:
    return ManagedNginx(load_config(config_file))


def get(url: str, timeout: float = 5, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def stop_fleet(config: Path) -> None:
    """The fleet of `config` gone, whatever happened: stopped the supported way, then what is left of nginx and
    the replicas killed one by one, by pid."""
    fleetdeck(config, "down", "--force", "--wait", "0")
    nginx = nginx_of(config)
    for process in own_nginx_processes(nginx.prefix, nginx.conf_path):
        os.kill(process.pid, signal.SIGKILL)
    for replica in Store(load_config(config).store_url).replicas():
        if process_matches(replica.pid, str(replica.port), replica.instance_id):
            os.kill(replica.pid, signal.SIGKILL)  # type: ignore[arg-type]


@pytest.fixture
def teardown() -> Iterator[list[Path]]:
    """Configs whose fleets must be gone after the test, whatever happened."""
    configs: list[Path] = []
    yield configs
    for config in configs:
        stop_fleet(config)


def test_killed_nginx_master_and_collector_are_reported_and_replaced(
    tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str, teardown: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_file = write_fleet(tmp_path, pg_dsn, redis_url, redis_prefix, standalone_collector=True)
    teardown.append(config_file)
    started = fleetdeck(config_file, "up", "--no-dashboard")
    assert started.returncode == 0, started.stdout + started.stderr
    healthy = fleetdeck(config_file, "status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    nginx = nginx_of(config_file)
    app_url = f"http://{nginx.lb.listen}/livez"
    master = nginx.master_pid()
    assert master is not None
    workers = sorted(p.pid for p in own_nginx_processes(nginx.prefix, nginx.conf_path) if p.role == "worker")
    assert len(workers) == 2
    collector_pid = int((load_config(config_file).state_path / "collector.pid").read_text())

    # the fault: kill -9 of the nginx master and of the standalone collector
    os.kill(master, signal.SIGKILL)
    os.kill(collector_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(master) and not pid_alive(collector_pid), "the killed processes to be gone")
    assert get(app_url) == 200, "the orphaned workers keep serving"

    shown = fleetdeck(config_file, "status")
    assert shown.returncode == 3, shown.stdout + shown.stderr
    for worker in workers:
        assert f"nginx worker  pid {worker:<8} orphaned" in shown.stdout, shown.stdout
    assert f"collector     pid {collector_pid:<8} dead" in shown.stdout, shown.stdout
    state = json.loads(fleetdeck(config_file, "status", "--json").stdout)
    assert state["nginx"]["process"]["state"] == "orphaned"
    assert sorted(state["nginx"]["process"]["orphaned_workers"]) == workers
    assert any("collector" in problem for problem in state["problems"])

    # the collector records the real process state and the alert fires (stub_status alone still looks fine)
    samples = collect_nginx(config_file)
    process = next(s for s in samples if s.metric == "process_state")
    assert process.value == 1 and "orphaned" in (process.text or ""), process
    assert next(s for s in samples if s.metric == "up").value == 1  # it still answers: that is the trap
    fired = {a.target: a for a in AlertEvaluator().evaluate(samples)}
    assert fired["lb_master_gone/nginx:web"].value == 1

    # the dashboard's Load balancer page says so, and every page says the collector is gone
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config_file))
    board = AppTest.from_file(str(DASHBOARD_APP), default_timeout=60)
    board.run()
    board.switch_page("app_pages/load_balancer.py").run()
    assert not board.exception, [e.value for e in board.exception]
    errors = "\n".join(str(e.value) for e in board.error)
    assert "nginx master is gone" in errors and str(workers[0]) in errors, errors
    assert "collector (standalone" in errors and "is not running" in errors, errors

    # `up` replaces the orphans with a new master and restarts the collector
    repaired = fleetdeck(config_file, "up", "--no-dashboard")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "orphaned worker(s) still serving" in repaired.stdout
    assert not any(pid_alive(w) for w in workers)
    new_master = nginx.master_pid()
    assert new_master is not None and new_master != master
    assert get(app_url) == 200
    after = fleetdeck(config_file, "status")
    assert after.returncode == 0, after.stdout + after.stderr

    # killed again: `down` finds and stops the orphans too, and the port is free afterwards
    new_workers = [p.pid for p in own_nginx_processes(nginx.prefix, nginx.conf_path) if p.role == "worker"]
    os.kill(new_master, signal.SIGKILL)
    wait_for(lambda: not pid_alive(new_master), "the second master to be gone")
    stopped = fleetdeck(config_file, "down", "--wait", "5")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "orphaned worker(s)" in stopped.stdout
    assert not any(pid_alive(w) for w in new_workers)
    assert own_nginx_processes(nginx.prefix, nginx.conf_path) == []
    host, port = nginx.lb.listen.split(":")
    assert port_is_free(host, int(port))
    final = fleetdeck(config_file, "status")
    assert final.returncode == 0, final.stdout  # the fleet is down on purpose: nothing is missing


def test_down_respects_a_running_drain_and_a_forced_down_fails_it(
    tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str, teardown: list[Path]
) -> None:
    config_file = write_fleet(tmp_path, pg_dsn, redis_url, redis_prefix, standalone_collector=False, stop_grace_s=3)
    teardown.append(config_file)
    started = fleetdeck(config_file, "up", "--no-dashboard")
    assert started.returncode == 0, started.stdout + started.stderr
    config = load_config(config_file)
    store = Store(config.store_url)
    web1 = next(r for r in store.replicas("web") if r.instance_id == "web-1")

    # two slow requests in flight on web-1 (sent to it directly), then a drain that waits for them: more requests in
    # flight than the drain's own probe could explain keep it waiting (actions/drain_evidence.py)
    slow: dict[str, object] = {}

    def slow_request(key: int) -> None:
        try:
            slow[str(key)] = get(f"http://{web1.host}:{web1.port}/work/echo?ms=20000", timeout=40, data=b"{}")
        except OSError as error:
            slow[str(key)] = f"{type(error).__name__}"

    for key in range(2):
        threading.Thread(target=slow_request, args=(key,), daemon=True).start()
    wait_for(lambda: _in_flight(web1.host, web1.port) >= 2, "the slow requests to start")
    drain = subprocess.Popen([FLEETDECK_SCRIPT, "--config", str(config_file), "drain", "web-1", "--timeout", "25",
                              "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(lock["service"] == "web" for lock in store.locks()), "the drain to take the lock")

        # `down` waits within its bound, then refuses and changes nothing
        refused = fleetdeck(config_file, "down", "--wait", "1")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "busy: web: drain by" in refused.stderr
        assert pid_alive(web1.pid) and nginx_of(config_file).is_running()
        assert any(e.action == "down" and e.result == "refused" for e in store.audit())

        # forced: the fleet stops, the drain fails instead of reporting success, the force is audited
        forced = fleetdeck(config_file, "down", "--force", "--wait", "0.5")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "FORCED" in forced.stdout
        out, err = drain.communicate(timeout=60)
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    assert drain.returncode != 0, out + err
    assert "drained in" not in out
    assert "web-1" in err and "failed" in err
    entries = store.audit()
    drain_outcome = [e for e in entries if e.action == "drain" and e.result not in ("started",)]
    assert drain_outcome and drain_outcome[-1].result == "failed"
    forced_entry = [e for e in entries if e.action == "down" and e.result == "ok"][-1]
    assert forced_entry.params["force"] is True and forced_entry.before["overridden"]["web"]["action"] == "drain"

    # the next `up`: every replica in rotation, no drained flag inherited from the stopped web-1
    again = fleetdeck(config_file, "up", "--no-dashboard")
    assert again.returncode == 0, again.stdout + again.stderr
    servers = nginx_of(config_file).current()
    assert len(servers) == 2 and all(s.state == "up" for s in servers), servers


def _in_flight(host: str, port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=3) as response:
            return int(json.loads(response.read()).get("inFlight", 0))
    except (OSError, ValueError):
        return 0


def test_a_drained_flag_does_not_outlive_its_replica(tmp_path: Path, pg_dsn: str, redis_url: str,
                                                      redis_prefix: str) -> None:
    """A replica that died while drained and was started again on the same address starts in rotation, said."""
    config_file = write_fleet(tmp_path, pg_dsn, redis_url, redis_prefix, standalone_collector=False)
    nginx = nginx_of(config_file)
    drained_at = time.time()
    nginx._write_state(4, [UpstreamServer("127.0.0.1:9101", "down", "web-1"),
                           UpstreamServer("127.0.0.1:9102", "up", "web-2")])

    def replica(instance_id: str, port: int, started_at: float) -> Replica:
        return Replica("web", instance_id, "127.0.0.1", port, 1, "running", started_at, "1")

    said: list[str] = []
    same_process = [replica("web-1", 9101, drained_at - 60), replica("web-2", 9102, drained_at - 60)]
    assert [s.state for s in desired_upstream(nginx, same_process, said.append)] == ["down", "up"]
    assert said == []
    restarted = [replica("web-1", 9101, drained_at + 5), replica("web-2", 9102, drained_at - 60)]
    assert [s.state for s in desired_upstream(nginx, restarted, said.append)] == ["up", "up"]
    assert said and "web-1 is a new replica" in said[0]
