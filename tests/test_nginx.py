"""The managed nginx with a real nginx binary in front of two real backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions.backends.base import DRAINING, UP, UpstreamServer
from actions.backends.nginx import ManagedNginx
from core.config import FleetConfig, parse_config
from core.process import http_get, pid_alive
from core.store import Store
from tests.support import PYTHON, free_port, wait_http
from tests.support_standin import write_standin

NGINX = "/usr/sbin/nginx"  # Debian's nginx, as the config default


class BrokenNginx(ManagedNginx):
    """Renders an upstream block nginx -t must reject."""

    def render_upstream(self, servers: list[UpstreamServer]) -> str:
        return super().render_upstream(servers).replace("keepalive ", "no_such_directive on;\n    keepalive ", 1)


class StaleGenerationNginx(ManagedNginx):
    """Valid config whose marker keeps answering an old generation, so verification must fail."""

    def render_files(self, servers: list[UpstreamServer], generation: int) -> dict[str, str]:
        files = super().render_files(servers, generation)
        files["generation.conf"] = files["generation.conf"].replace(f'"{generation}', f'"{generation + 1000}')
        return files


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Two stand-in replicas: instance id -> port."""
    directory = tmp_path_factory.mktemp("backends")
    script = write_standin(directory)
    ports = {"web-1": free_port(), "web-2": free_port()}
    processes = [
        subprocess.Popen([PYTHON, str(script), "--port", str(port), "--instance-id", name], start_new_session=True,
                         stdout=subprocess.DEVNULL)
        for name, port in ports.items()
    ]
    try:
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/health", 15)
        yield ports
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


@pytest.fixture
def config(tmp_path: Path) -> FleetConfig:
    data = {
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [
            {"name": "web", "command": "unused {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}
        ],
        "load_balancer": {"service": "web", "listen": f"127.0.0.1:{free_port()}", "worker_processes": 1,
                          "worker_shutdown_timeout_s": 5},
    }
    return parse_config(data, "test", tmp_path)


@pytest.fixture
def nginx(config: FleetConfig) -> Iterator[ManagedNginx]:
    managed = ManagedNginx(config, Store(config.store_url))
    yield managed
    managed.stop(timeout_s=5)


def served_by(base: str, count: int) -> Counter[str]:
    """Which instance answered each of `count` POSTs (POST: nginx never retries it on another server)."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        request = urllib.request.Request(f"{base}/work/echo", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            seen[json.loads(response.read())["instanceId"]] += 1
    return seen


def generation_answers(nginx: ManagedNginx, connections: int = 5, bound_s: float = 20.0) -> set[int | None]:
    """The generations `connections` fresh connections are served, right after an apply.

    A connection that gets no answer at all (a loaded machine) is retried within `bound_s`; a wrong generation
    is kept: once apply() returned, no connection may reach an older configuration.
    """
    answers: set[int | None] = set()
    deadline = time.monotonic() + bound_s
    while connections and time.monotonic() < deadline:
        served = nginx.served_generation()
        if served is not None:
            answers.add(served)
            connections -= 1
    return answers if not connections else answers | {None}


def servers_for(backends: dict[str, int], states: dict[str, str] | None = None) -> list[UpstreamServer]:
    states = states or {}
    return [UpstreamServer(f"127.0.0.1:{port}", states.get(name, UP), name) for name, port in backends.items()]


def test_render_validate_reload_and_rollback(
    config: FleetConfig, nginx: ManagedNginx, backends: dict[str, int]
) -> None:
    base = f"http://{config.load_balancer.listen}" if config.load_balancer else ""
    first = nginx.apply(servers_for(backends))
    assert first.ok, first.detail
    assert first.generation == 1 and nginx.is_running() and generation_answers(nginx) == {1}
    assert set(served_by(base, 10)) == {"web-1", "web-2"}, "round robin must reach both backends"

    with urllib.request.urlopen(f"{base}/anything", timeout=5) as response:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert response.headers["X-Request-Id"]
    status, body = http_get(f"{base}/nginx_status", 2)
    assert status == 200 and b"Active connections" in body
    state = json.loads((nginx.prefix / "upstream.json").read_text())
    assert state["generation"] == 1 and [s["state"] for s in state["servers"]] == [UP, UP]
    log_lines = [json.loads(line) for line in (nginx.prefix / "logs" / "access.json.log").read_text().splitlines()]
    assert {line["ua"] for line in log_lines if line["m"] == "POST"} == {f"127.0.0.1:{p}" for p in backends.values()}

    # a broken render is rejected by nginx -t; the previous files come back and generation 1 keeps serving
    good_upstream = (nginx.prefix / "upstream.conf").read_text()
    broken = BrokenNginx(config).apply(servers_for(backends, {"web-1": DRAINING}))
    assert not broken.ok and broken.rolled_back and "no_such_directive" in broken.detail
    assert (nginx.prefix / "upstream.conf").read_text() == good_upstream
    assert (nginx.prefix / "upstream.conf.bak").exists()
    assert generation_answers(nginx) == {1} and nginx.generation() == 1
    assert set(served_by(base, 10)) == {"web-1", "web-2"}

    # a config nginx accepts but whose generation never shows up is rolled back too
    stale = StaleGenerationNginx(config, verify_timeout_s=1).apply(servers_for(backends))
    assert not stale.ok and stale.rolled_back and "not live" in stale.detail
    assert "WARNING" not in stale.detail, "the rollback itself must be verified live, the rejected workers retired"
    assert generation_answers(nginx) == {1} and nginx.generation() == 1
    assert set(served_by(base, 10)) == {"web-1", "web-2"}

    # draining renders `down`: no new request reaches web-1
    drained = nginx.apply(servers_for(backends, {"web-1": DRAINING}))
    assert drained.ok and drained.generation == 2 and generation_answers(nginx) == {2}
    assert f"127.0.0.1:{backends['web-1']} max_fails=3 fail_timeout=10s down;" in (
        nginx.prefix / "upstream.conf"
    ).read_text()
    assert served_by(base, 10) == Counter({"web-2": 10})
    assert [s.state for s in nginx.current()] == [DRAINING, UP]

    # no servers at all is still a valid config: nginx answers 502 instead of refusing to load
    empty = nginx.apply([])
    assert empty.ok and generation_answers(nginx) == {3}
    assert http_get(f"{base}/work/echo", 5)[0] == 502

    master = nginx.master_pid()
    workers = nginx._children_of(master or 0)
    assert master and workers
    assert nginx.stop(timeout_s=5)
    assert not pid_alive(master) and not any(pid_alive(w) for w in workers)
    assert not nginx.is_running() and not (nginx.prefix / "nginx.pid").exists()


def test_rate_limits_can_be_disabled(tmp_path: Path) -> None:
    from actions.backends.nginx import render_nginx_conf

    data = {
        "services": [{"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "load_balancer": {"service": "web", "rate_limits": {"enabled": False}},
    }
    lb = parse_config(data, "test", tmp_path).load_balancer
    assert lb is not None
    assert "limit_req" not in render_nginx_conf(lb, tmp_path)
    enabled = render_nginx_conf(lb.model_copy(update={"rate_limits": lb.rate_limits.model_copy(
        update={"enabled": True})}), tmp_path)
    assert "rate=10r/s" in enabled and "rate=2r/s" in enabled and "burst=20" in enabled


def test_external_mode_renders_include_and_rolls_back(tmp_path: Path) -> None:
    include = tmp_path / "conf.d" / "fleet-upstream.conf"
    marker = tmp_path / "reloaded"

    def external(reload_command: str, test_command: str | None = None) -> ManagedNginx:
        data = {
            "services": [{"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
            "load_balancer": {"service": "web", "mode": "external", "include_path": str(include),
                              # no test_command: the reload command alone decides
                              "reload_command": reload_command, "test_command": test_command},
        }
        return ManagedNginx(parse_config(data, "test", tmp_path))

    good = external(f"touch {marker}").apply([UpstreamServer("127.0.0.1:9101", UP, "web-1")])
    assert good.ok and marker.exists() and good.generation == 1
    assert "server 127.0.0.1:9101 max_fails=3 fail_timeout=10s;" in include.read_text()
    failed = external("echo reload broke >&2; exit 3").apply([UpstreamServer("127.0.0.1:9102", UP, "web-2")])
    assert not failed.ok and "reload broke" in failed.detail and failed.generation == 1
    assert "9101" in include.read_text() and "9102" not in include.read_text()

    # the operator's real nginx validates the include: a conf that includes it, checked with the real `nginx -t`
    operator_conf = tmp_path / "operator-nginx.conf"
    operator_conf.write_text(
        f"pid {tmp_path}/op.pid; error_log stderr;\nevents {{}}\n"
        f"http {{ include {include}; server {{ listen 127.0.0.1:1; }} }}\n"
    )
    nginx_test = f"{NGINX} -t -q -c {operator_conf} -p {tmp_path}"
    validated = external(f"touch {marker}", nginx_test).apply([UpstreamServer("127.0.0.1:9103", UP, "web-3")])
    assert validated.ok and "9103" in include.read_text(), validated.detail
    marker.unlink()
    # a well-formed address nginx cannot resolve (a malformed one is refused before rendering: test_config_injection)
    rejected = external(f"touch {marker}", nginx_test).apply([UpstreamServer("no-such-host.invalid:80", UP, "web-4")])
    assert not rejected.ok and "test_command rejected" in rejected.detail, rejected.detail
    assert "9103" in include.read_text() and "no-such-host" not in include.read_text(), "include restored"
    assert not marker.exists(), "no reload after a failed test"
