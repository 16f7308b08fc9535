"""Docker and Swarm backends against a real dockerd, containers on host networking only.

The session fixture starts dockerd (scripts/docker/ensure-dockerd.sh) when none runs and stops it afterwards;
images are built from compose/ on a locally debootstrapped base (no registry). Every replica listens on its own
loopback port; no traffic goes to a container or bridge address.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from actions.base import UP, UpstreamServer
from actions.docker_backend import (
    LABEL_PROJECT,
    DockerOrchestrator,
    cpu_percent,
    memory_bytes,
    parse_docker_time,
    reload_nginx_container,
)
from core.config import FleetConfig, ServiceConfig, parse_config
from tests.support import REPO_ROOT, RUN_ID, free_port, free_port_block, wait_http

SCRIPTS = Path(REPO_ROOT) / "scripts" / "docker"
COMPOSE_DIR = Path(REPO_ROOT) / "compose"
PIDFILE = f"/run/fleetdeck-dockerd-test-{RUN_ID}.pid"
SAMPLEAPP_IMAGE = "fleetdeck/sampleapp:dev"


def run(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


# --- pure functions: no daemon needed ------------------------------------------------------------------------


def test_stats_formulas_follow_design_section_8() -> None:
    stats = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000_000}, "system_cpu_usage": 20_000_000_000, "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 10_000_000_000},
        "memory_stats": {"usage": 100_000_000, "stats": {"total_inactive_file": 30_000_000}},
    }
    assert cpu_percent(stats) == pytest.approx(20.0)  # 1e9 / 1e10 × 2 cpus × 100
    assert memory_bytes(stats) == 70_000_000
    v2 = {"memory_stats": {"usage": 50, "stats": {"inactive_file": 20}}}
    assert memory_bytes(v2) == 30
    assert cpu_percent({"cpu_stats": {}, "precpu_stats": {}}) is None  # first reading: no difference yet


def test_docker_timestamps_with_nanoseconds() -> None:
    assert parse_docker_time("2024-05-01T10:00:00.123456789Z") == pytest.approx(1714557600.123456)
    assert parse_docker_time("0001-01-01T00:00:00Z") == 0.0
    assert parse_docker_time("") == 0.0


# --- fixtures: daemon and images -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    env = {**os.environ, "FLEETDECK_DOCKERD_PIDFILE": PIDFILE}
    done = subprocess.run([str(SCRIPTS / "ensure-dockerd.sh")], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"dockerd cannot run here, so the Docker backend cannot be tested:\n{done.stderr[-3000:]}")
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()
        # stops only a dockerd this session started (the script finds no pid file otherwise)
        subprocess.run([str(SCRIPTS / "stop-dockerd.sh")], env=env, timeout=120, check=False)


@pytest.fixture(scope="session")
def images(docker_client: Any) -> list[str]:
    run([str(SCRIPTS / "ensure-base-image.sh")])
    run([str(SCRIPTS / "build-images.sh"), "sampleapp", "fleetdeck"])
    return [SAMPLEAPP_IMAGE, "fleetdeck/fleetdeck:dev"]


def _config(project: str, web_port: int, nginx_port: int, state_dir: Path, include: Path) -> FleetConfig:
    python = Path(REPO_ROOT) / ".venv" / "bin" / "python"
    return parse_config(
        {
            "state_dir": str(state_dir),
            "services": [
                {
                    "name": "web", "backend": "docker", "compose_project": project, "compose_service": "web",
                    "host": "127.0.0.1", "ports": {"start": web_port, "end": web_port + 9},
                    "replicas": 3, "min_replicas": 1, "max_replicas": 6, "stop_grace_s": 10,
                    "boot_timeout_s": 60,
                }
            ],
            "load_balancer": {
                "mode": "external", "service": "web", "listen": f"127.0.0.1:{nginx_port}",
                "include_path": str(include),
                # nginx runs in a container: `nginx -t` and the reload happen in there
                "nginx_binary": "/nonexistent/nginx",
                "reload_command": (
                    f"cd {REPO_ROOT} && {python} -m actions.docker_backend reload-nginx"
                    f" --project {project} --service nginx-host"
                ),
                "rate_limits": {"enabled": False},
            },
        },
        "test",
        Path(REPO_ROOT),
    )


# --- load through nginx -----------------------------------------------------------------------------------------


class PostLoad:
    """Constant POST load with unique request ids through nginx (nginx never retries a POST on another upstream
    once sent, so a dropped request shows). Connections closed by an nginx reload while idle are counted apart."""

    def __init__(self, port: int, workers: int = 4) -> None:
        self.port = port
        self.workers = workers
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.reload_closed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(workers)]

    def _loop(self, worker: int) -> None:
        conn: http.client.HTTPConnection | None = None
        seq = 0
        while not self.stop_flag.is_set():
            seq += 1
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            body = json.dumps({"rid": f"{worker}-{seq}"}).encode()
            try:
                conn.request("POST", "/work/echo", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                with self.lock:
                    if 200 <= response.status < 300:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {response.status}")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                conn.close()
                conn = None
                with self.lock:
                    if fresh:
                        self.failures.append(f"transport: {error!r}")
                    else:
                        self.reload_closed += 1  # an idle keep-alive closed by a reload; not a dropped request
                continue
            except OSError as error:
                conn.close()
                conn = None
                with self.lock:
                    self.failures.append(f"transport: {error!r}")
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def __enter__(self) -> PostLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for thread in self.threads:
            thread.join(timeout=15)


# --- the Compose stack on host networking -------------------------------------------------------------------------


@pytest.fixture
def compose_stack(images: list[str], docker_client: Any, pg_dsn: str, redis_prefix: str, tmp_path: Path,
                  ) -> Iterator[dict[str, Any]]:
    project = f"fdt{RUN_ID}"
    web_port = free_port_block(10)
    nginx_port = free_port()
    # host networking: the app in the container reaches the machine's Postgres as the postgres role
    database_url = pg_dsn.replace("postgresql://", "postgresql://postgres@", 1) if "@" not in pg_dsn else pg_dsn
    env = {
        **os.environ,
        "FD_WEB_PORT": str(web_port),
        "FD_NGINX_LISTEN": f"127.0.0.1:{nginx_port}",
        "FD_DATABASE_URL": database_url,
        "FD_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FD_BULLMQ_PREFIX": redis_prefix,
    }
    compose = ["docker-compose", "-p", project, "-f", "docker-compose.yml", "-f", "docker-compose.hostnet.yml"]
    try:
        up = [*compose, "up", "-d", "--no-deps", "--no-build", "web", "nginx-host"]
        run(up, env=env, cwd=COMPOSE_DIR, timeout=180)
        volume = docker_client.volumes.get(f"{project}_nginx-upstream")
        include = Path(volume.attrs["Mountpoint"]) / "upstream.conf"
        config = _config(project, web_port, nginx_port, tmp_path / "state", include)
        yield {"project": project, "config": config, "nginx_port": nginx_port, "include": include}
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans", "-t", "5"], env=env, cwd=COMPOSE_DIR,
                       capture_output=True, timeout=180, check=False)
        # clones carry the project's labels, so `down` removes them too; anything left is a bug we clean up
        for leftover in docker_client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={project}"}):
            leftover.remove(force=True)


def _upstream(replicas: list[Any], draining: set[str] | None = None) -> list[UpstreamServer]:
    draining = draining or set()
    return [
        UpstreamServer(r.address, "draining" if r.instance_id in draining else UP, r.instance_id) for r in replicas
    ]


def _in_flight(replica: Any) -> int:
    with urllib.request.urlopen(f"{replica.base_url}/health", timeout=2) as response:
        return int(json.loads(response.read()).get("inFlight", 0))


def _collect(config: FleetConfig, backend: DockerOrchestrator, service: ServiceConfig) -> dict[str, float]:
    """Run the real instance collector over the replicas the Docker backend lists: target → up."""
    from collectors.instances import InstanceCollector, discover_targets

    targets = discover_targets(config, lambda name: backend.list(service) if name == service.name else [])
    collector = InstanceCollector(config, fixed_targets=targets)

    async def all_targets() -> list[Any]:
        try:
            return [s for t in targets for s in await collector.collect(t)]
        finally:
            await collector.aclose()

    samples = asyncio.run(all_targets())
    return {s.target: s.value for s in samples if s.metric == "up"}


def test_compose_stack_scale_drain_under_load(compose_stack: dict[str, Any], docker_client: Any) -> None:
    from actions.nginx import ManagedNginx

    config: FleetConfig = compose_stack["config"]
    service = config.service("web")
    backend = DockerOrchestrator(config)
    nginx = ManagedNginx(config)

    # the stack started one replica (web-1, on the first port); the backend finds it by its Compose labels
    first = backend.list(service)
    assert [r.instance_id for r in first] == ["web-1"]
    backend.wait_healthy(service, first[0])

    def scale_up_to(count: int) -> None:
        while len(backend.live(service)) < count:
            replica = backend.start(service)
            backend.wait_healthy(service, replica)
            nginx.apply(_upstream(backend.live(service))).raise_for_failure()

    def scale_down_to(count: int) -> None:
        while len(backend.live(service)) > count:
            live = backend.live(service)
            victim = live[-1]  # the newest goes first, as Compose's scale-down would pick
            nginx.apply(_upstream(live, {victim.instance_id})).raise_for_failure()
            deadline = time.monotonic() + service.drain_timeout_s
            # old nginx workers finish their requests; then nothing is in flight on the victim
            while _in_flight(victim) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
            backend.stop(service, victim.instance_id, grace_s=service.stop_grace_s)
            nginx.apply(_upstream(backend.live(service))).raise_for_failure()

    scale_up_to(3)
    wait_http(f"http://127.0.0.1:{compose_stack['nginx_port']}/livez", timeout_s=20)

    # the collectors see every replica, by the addresses the backend reports
    seen = _collect(config, backend, service)
    assert seen == {f"web/web-{n}": 1.0 for n in (1, 2, 3)}, seen
    # container CPU and memory, one sample pair per replica
    stats = backend.stats_samples(service)
    assert {s.target for s in stats if s.metric == "container_memory_bytes"} == set(seen)
    assert all(s.value > 0 for s in stats if s.metric == "container_memory_bytes")

    with PostLoad(compose_stack["nginx_port"]) as load:
        time.sleep(1.0)
        scale_up_to(5)
        assert len(_collect(config, backend, service)) == 5
        time.sleep(1.0)
        scale_down_to(2)
        time.sleep(1.0)
    assert load.ok > 200, f"too little load went through ({load.ok})"
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:5]}"

    remaining = backend.live(service)
    assert [r.instance_id for r in remaining] == ["web-1", "web-2"]
    numbers = sorted(int(c.labels["com.docker.compose.container-number"]) for c in backend.containers(service))
    assert numbers == [1, 2]
    # nginx serves only what is left, and the include on the shared volume says so
    text = compose_stack["include"].read_text()
    assert all(r.address in text for r in remaining)
    assert reload_nginx_container(docker_client, compose_stack["project"], "nginx-host").endswith("reloaded")

    # the fleetdeck image runs the same backend from inside a container (Docker socket mounted)
    listing = docker_client.containers.run(
        "fleetdeck/fleetdeck:dev",
        ["python3", "-m", "actions.docker_backend", "list", "--project", compose_stack["project"], "--service", "web"],
        network_mode="host", remove=True, volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock"}},
    ).decode()
    assert [json.loads(line)["number"] for line in listing.splitlines()] == [1, 2]


def test_drain_one_container_then_restart(compose_stack: dict[str, Any]) -> None:
    from actions.nginx import ManagedNginx

    config: FleetConfig = compose_stack["config"]
    service = config.service("web")
    backend = DockerOrchestrator(config)
    nginx = ManagedNginx(config)
    backend.wait_healthy(service, backend.list(service)[0])
    backend.wait_healthy(service, backend.start(service))
    live = backend.live(service)
    nginx.apply(_upstream(live)).raise_for_failure()
    wait_http(f"http://127.0.0.1:{compose_stack['nginx_port']}/livez", timeout_s=20)
    with PostLoad(compose_stack["nginx_port"], workers=2) as load:
        time.sleep(0.5)
        drained = live[1]
        nginx.apply(_upstream(live, {drained.instance_id})).raise_for_failure()
        time.sleep(0.5)
        # a drained replica keeps running; a restart of it is invisible to the clients
        restarted = backend.restart(service, drained.instance_id, grace_s=5)
        backend.wait_healthy(service, restarted)
        nginx.apply(_upstream(backend.live(service))).raise_for_failure()
        time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50


# --- Swarm ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def swarm(images: list[str], docker_client: Any) -> Iterator[Any]:
    joined_here = docker_client.info()["Swarm"]["LocalNodeState"] != "active"
    if joined_here:
        docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        yield docker_client
    finally:
        if joined_here:
            docker_client.swarm.leave(force=True)
            # Swarm made this bridge for its own use; we leave the machine as we found it
            for network in docker_client.networks.list(names=["docker_gwbridge"]):
                for _ in range(20):
                    try:
                        network.remove()
                        break
                    except docker.errors.APIError:
                        time.sleep(0.5)


def test_swarm_service_scaled_up_and_down(swarm: Any, pg_dsn: str, redis_prefix: str) -> None:
    from docker.types import EndpointSpec, RestartPolicy, ServiceMode

    from actions.swarm_backend import SwarmOrchestrator

    port_base = free_port_block(6)
    name = f"fdtsw{RUN_ID}"
    database_url = pg_dsn.replace("postgresql://", "postgresql://postgres@", 1) if "@" not in pg_dsn else pg_dsn
    swarm.services.create(
        SAMPLEAPP_IMAGE,
        name=name,
        networks=["host"],
        env=[
            "HOST=127.0.0.1", f"PORT_BASE={port_base}", "TASK_SLOT={{.Task.Slot}}", "INSTANCE_ID=web-{{.Task.Slot}}",
            f"DATABASE_URL={database_url}", "REDIS_URL=redis://127.0.0.1:6379/0", f"BULLMQ_PREFIX={redis_prefix}",
            "DRAIN_DELAY_S=0",
        ],
        mode=ServiceMode("replicated", replicas=2),
        restart_policy=RestartPolicy(condition="on-failure"),
        endpoint_spec=EndpointSpec(mode="dnsrr"),
        stop_grace_period=5 * 10**9,
    )
    try:
        service = ServiceConfig(
            name="web", backend="swarm", compose_service=name, host="127.0.0.1",
            ports={"start": port_base, "end": port_base + 5}, replicas=2, max_replicas=4, stop_grace_s=5,
            boot_timeout_s=60,
        )
        backend = SwarmOrchestrator()
        deadline = time.monotonic() + 60
        while len(backend.live(service)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        replicas = backend.live(service)
        assert [(r.instance_id, r.port) for r in replicas] == [("web-1", port_base), ("web-2", port_base + 1)]
        for replica in replicas:
            backend.wait_healthy(service, replica)

        added = backend.start(service)
        assert (added.instance_id, added.port) == ("web-3", port_base + 2)
        backend.wait_healthy(service, added)
        assert len(backend.live(service)) == 3

        # the chosen task (not Swarm's pick) is the one removed
        stopped = backend.stop(service, "web-2")
        assert stopped.instance_id == "web-2"
        assert sorted(r.instance_id for r in backend.live(service)) == ["web-1", "web-3"]
        assert backend.desired_replicas(backend.swarm_service(service)) == 2
    finally:
        swarm.services.get(name).remove()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and swarm.containers.list(
            all=True, filters={"label": f"com.docker.swarm.service.name={name}"}
        ):
            time.sleep(0.5)
