"""Docker and Swarm backends against a real dockerd, containers on host networking only.

The session fixture starts dockerd (scripts/docker/ensure-dockerd.sh) when none runs and stops it afterwards;
images are built from compose/ on a locally debootstrapped base (no registry). Every replica listens on its own
loopback port; no traffic goes to a container or bridge address.

Size (~580 lines): one file because every test shares the session's dockerd and built images (one dockerd per
machine).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from actions.auth import Principal
from actions.backends.base import DOWN, LIVE_STATES, UP
from actions.backends.docker import (
    LABEL_PROJECT,
    DockerOrchestrator,
    cpu_percent,
    memory_bytes,
    parse_docker_time,
    reload_nginx_container,
)
from actions.operations import FleetActions, OperationResult
from collectors.instances import discover_targets
from core.config import FleetConfig, parse_config
from core.store import Store
from tests.support import REPO_ROOT, RUN_ID, free_port, free_port_block, wait_http

SCRIPTS = Path(REPO_ROOT) / "scripts" / "docker"
COMPOSE_DIR = Path(REPO_ROOT) / "compose"
PIDFILE = f"/run/fleetdeck-dockerd-test-{RUN_ID}.pid"
SAMPLEAPP_IMAGE = "fleetdeck/sampleapp:dev"
# every scale, drain and restart below goes through FleetActions as this operator: guard rails, lock, audit
OPERATOR = Principal("test-operator", "operator", "cli")
VIEWER = Principal("test-viewer", "viewer", "cli")


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


def test_registry_mirror_upserts_changes_and_drops_vanished(tmp_path: Path) -> None:
    from actions.backends.base import Replica
    from actions.backends.docker import mirror_replicas, recorded_states
    from core.store import ReplicaRecord

    store = Store(f"sqlite:///{tmp_path}/store.db")
    # a local replica under the same service name is another backend's: never touched
    store.upsert_replica(ReplicaRecord("web", "web-9", "local", "127.0.0.1", 9109, 99, "running", 1.0, "99"))
    one, two = (Replica("web", f"web-{n}", "127.0.0.1", 9100 + n, None, "running", 1.0, f"c{n}") for n in (1, 2))
    mirror_replicas(store, "docker", "web", [one, two], recorded_states(store, "docker", "web"))
    assert recorded_states(store, "docker", "web") == {"web-1": "running", "web-2": "running"}
    # web-2 was removed behind fleetdeck's back, web-1 is restarting
    mirror_replicas(store, "docker", "web", [one._replace(state="starting")], recorded_states(store, "docker", "web"))
    assert recorded_states(store, "docker", "web") == {"web-1": "starting"}
    assert [r.instance_id for r in store.replicas("web") if r.backend == "local"] == ["web-9"]


def test_nginx_worker_pids_from_docker_top() -> None:
    from actions.backends.docker import nginx_worker_pids, wait_workers_gone

    class FakeContainer:
        def __init__(self) -> None:
            self.calls = 0

        def top(self) -> dict[str, Any]:
            self.calls += 1
            workers = [["root", "12", "10", "0", "10:00", "?", "00:00:00", "nginx: worker process"],
                       ["www", "13", "10", "0", "10:00", "?", "00:00:00", "nginx: worker process is shutting down"]]
            return {
                "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                "Processes": [["root", "10", "1", "0", "10:00", "?", "00:00:00", "nginx: master process nginx"],
                              *(workers if self.calls < 3 else [])],
            }

    container = FakeContainer()
    assert nginx_worker_pids(container) == {12, 13}  # type: ignore[arg-type]
    assert wait_workers_gone(container, {12, 13}, timeout_s=5, poll_s=0.01) == set()  # type: ignore[arg-type]


def test_container_collector_is_registered_first_for_docker_services(tmp_path: Path) -> None:
    from collectors.scheduler import build_collectors

    service = {"name": "web", "backend": "docker", "compose_project": "p", "ports": {"start": 9100, "end": 9109}}
    docker_config = parse_config({"state_dir": str(tmp_path), "services": [service]}, "test", tmp_path)
    # registry order (collectors/registry.py); the replica table is synced by the reconcile step, not by targets()
    assert [c.name for c in build_collectors(docker_config)][:2] == ["containers", "instances"]
    local = {**service, "backend": "local", "command": "true {port} {instance_id}"}
    local_config = parse_config({"state_dir": str(tmp_path), "services": [local]}, "test", tmp_path)
    assert "containers" not in [c.name for c in build_collectors(local_config)]


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
    state_dir.mkdir(parents=True, exist_ok=True)
    return parse_config(
        {
            "state_dir": str(state_dir),
            # the test's own store: the replica registry, locks and audit of this stack only
            "store": {"url": f"sqlite:///{state_dir}/fleetdeck.db"},
            "services": [
                {
                    "name": "web", "backend": "docker", "compose_project": project, "compose_service": "web",
                    "host": "127.0.0.1", "ports": {"start": web_port, "end": web_port + 9},
                    "replicas": 3, "min_replicas": 1, "max_replicas": 6, "min_healthy": 1, "stop_grace_s": 10,
                    "boot_timeout_s": 60, "drain_timeout_s": 15,
                }
            ],
            "load_balancer": {
                "mode": "external", "service": "web", "listen": f"127.0.0.1:{nginx_port}",
                "include_path": str(include),
                # nginx runs in a container: `nginx -t` and the reload happen in there, and the command returns
                # once the previous generation's workers are gone (what a drain waits for)
                "nginx_binary": "/nonexistent/nginx",
                "reload_command": (
                    f"cd {REPO_ROOT} && {python} -m actions.backends.docker reload-nginx"
                    f" --project {project} --service nginx-host --wait-old-workers 10"
                ),
                "rate_limits": {"enabled": False},
            },
        },
        "test",
        Path(REPO_ROOT),
    )


def _ok(result: OperationResult) -> OperationResult:
    assert result.ok, f"{result.action} {result.target}: {result.result}: {result.detail}"
    return result


def _audited(store: Store, result: OperationResult) -> list[str]:
    """The audit trail of one operation: its results in order, each row checked to name the operator."""
    rows = store.audit(op_id=result.op_id)
    assert {(row.who, row.action) for row in rows} == {(OPERATOR.name, result.action)}, rows
    return [row.result for row in rows]


def _upstream_states(nginx: Any) -> dict[str, str]:
    return {s.address: s.state for s in nginx.current()}


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
        # the base file requires it (it interpolates every service); the host-network services use FD_* instead
        "FLEETDECK_DB_PASSWORD": "unused-on-host-network",
    }
    compose = ["docker-compose", "-p", project, "-f", "docker-compose.yml", "-f", "docker-compose.hostnet.yml"]
    try:
        up = [*compose, "up", "-d", "--no-deps", "--no-build", "web", "nginx-host"]
        run(up, env=env, cwd=COMPOSE_DIR, timeout=180)
        volume = docker_client.volumes.get(f"{project}_nginx-upstream")
        include = Path(volume.attrs["Mountpoint"]) / "upstream.conf"
        config = _config(project, web_port, nginx_port, tmp_path / "state", include)
        yield {"project": project, "config": config, "nginx_port": nginx_port, "include": include,
               "web_port": web_port, "database_url": database_url}
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans", "-t", "5"], env=env, cwd=COMPOSE_DIR,
                       capture_output=True, timeout=180, check=False)
        # clones carry the project's labels, so `down` removes them too; anything left is a bug we clean up
        for leftover in docker_client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={project}"}):
            leftover.remove(force=True)


def test_compose_stack_scale_drain_under_load(compose_stack: dict[str, Any], docker_client: Any) -> None:
    from collectors.scheduler import collect_once

    config: FleetConfig = compose_stack["config"]
    service = config.service("web")
    store = Store(config.store_url)
    actions = FleetActions(config, store)
    # the backend and nginx FleetActions itself acts through (no test double anywhere)
    backend = actions.orchestrator(service)
    nginx = actions.balancer(service)
    assert isinstance(backend, DockerOrchestrator) and nginx is not None

    # the stack started one replica (web-1, on the first port); the backend finds it by its Compose labels and
    # mirrors it into the store's replica table, where the collectors look for targets
    first = backend.list(service)
    assert [r.instance_id for r in first] == ["web-1"]
    assert [(r.instance_id, r.backend) for r in store.replicas("web")] == [("web-1", "docker")]
    backend.wait_healthy(service, first[0])

    # nginx starts with a placeholder upstream: putting web-1 in rotation is an undrain of an unknown server
    ops = [_ok(actions.undrain(OPERATOR, "web-1")), _ok(actions.scale(OPERATOR, "web", 3))]
    wait_http(f"http://127.0.0.1:{compose_stack['nginx_port']}/livez", timeout_s=20)

    # the collectors, as the scheduler builds them, see every replica, with the container's CPU and memory
    samples = collect_once(config, store)
    up = {s.target: s.value for s in samples if s.source == "instance" and s.metric == "up"}
    assert up == {f"web/web-{n}": 1.0 for n in (1, 2, 3)}, up
    assert {(s.target, s.value) for s in samples if s.source == "docker" and s.metric == "up"} == {("docker:web", 1)}
    memory = {s.target: s.value for s in samples if s.metric == "container_memory_bytes"}
    assert set(memory) == set(up) and all(v > 0 for v in memory.values()), memory

    with PostLoad(compose_stack["nginx_port"]) as load:
        time.sleep(1.0)
        ops.append(_ok(actions.scale(OPERATOR, "web", 5)))
        assert len(backend.live(service)) == 5
        assert len(discover_targets(config, store.replicas)) == 5
        time.sleep(1.0)
        ops.append(_ok(actions.scale(OPERATOR, "web", 2)))
        time.sleep(1.0)
    assert load.ok > 200, f"too little load went through ({load.ok})"
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:5]}"

    # the newest went first, as Compose's own scale-down picks
    remaining = backend.live(service)
    assert [r.instance_id for r in remaining] == ["web-1", "web-2"]
    numbers = sorted(int(c.labels["com.docker.compose.container-number"]) for c in backend.containers(service))
    assert numbers == [1, 2]
    # the registry mirror followed: removed containers left the replica table (Docker's health may still say
    # "starting" for a young container, which is live too)
    registry = [(r.instance_id, r.state in LIVE_STATES) for r in store.replicas("web")]
    assert registry == [("web-1", True), ("web-2", True)], store.replicas("web")
    # nginx serves only what is left, and the include on the shared volume says so
    assert _upstream_states(nginx) == {r.address: UP for r in remaining}
    text = compose_stack["include"].read_text()
    assert all(r.address in text for r in remaining) and text.count("server 127.0.0.1:") == 2, text
    for op in ops:
        assert _audited(store, op) == ["started", "ok"], op.detail

    # the same guard rails as on the local backend: a viewer may not scale, nor anyone beyond max_replicas
    denied = actions.scale(VIEWER, "web", 3)
    assert denied.result == "refused" and "may not scale" in (denied.error or ""), denied.detail
    too_many = actions.scale(OPERATOR, "web", 7)
    assert too_many.result == "refused" and "outside" in (too_many.error or ""), too_many.detail
    assert [row.result for row in store.audit(op_id=too_many.op_id)] == ["refused"]
    assert len(backend.live(service)) == 2

    # the reload command every apply above ran: it returns once the previous generation's workers are gone
    reloaded = reload_nginx_container(docker_client, compose_stack["project"], "nginx-host", wait_old_workers_s=10)
    assert "validated and reloaded" in reloaded and "old worker(s) exited" in reloaded, reloaded

    # the fleetdeck image runs the same backend from inside a container (Docker socket mounted)
    sock = {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}
    listing = docker_client.containers.run(
        "fleetdeck/fleetdeck:dev",
        ["python3", "-m", "actions.backends.docker", "list", "--project", compose_stack["project"], "--service", "web"],
        network_mode="host", remove=True, volumes=sock,
    ).decode()
    assert [json.loads(line)["number"] for line in listing.splitlines()] == [1, 2]

    # ... and the Compose stack's collector (`fleetdeck collect`, compose/fleet.compose.yaml) finds every replica
    # from Docker alone: its store starts empty, nobody told it about web-1 or web-2
    env = {
        "FLEETDECK_PROJECT": compose_stack["project"],
        "FLEETDECK_WEB_HOST": "127.0.0.1",
        "FLEETDECK_WEB_PORTS_START": str(compose_stack["web_port"]),
        "FLEETDECK_WEB_PORTS_END": str(compose_stack["web_port"] + 9),
        "FLEETDECK_NGINX_LISTEN": f"127.0.0.1:{compose_stack['nginx_port']}",
        "FLEETDECK_NGINX_URL": f"http://127.0.0.1:{compose_stack['nginx_port']}",
        "FLEETDECK_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FLEETDECK_DATABASE_URL": compose_stack["database_url"],
        "FLEETDECK_STORE_URL": "sqlite:////tmp/fleetdeck-collect.db",
    }
    # exit 1 only means some target is down (the JSON says which); anything else prints stderr instead of JSON
    script = ("/opt/fleetdeck/fleetdeck collect --once --json 2>/tmp/err; code=$?;"
              " if [ $code -gt 1 ]; then cat /tmp/err; fi; exit 0")
    output = docker_client.containers.run(
        "fleetdeck/fleetdeck:dev", ["sh", "-c", script], network_mode="host", remove=True, environment=env,
        volumes={**sock, str(COMPOSE_DIR / "fleet.compose.yaml"): {"bind": "/etc/fleetdeck/fleet.yaml", "mode": "ro"}},
    ).decode()
    try:
        collected = json.loads(output)
    except ValueError:
        raise AssertionError(f"fleetdeck collect --once --json in the image failed:\n{output[-3000:]}") from None
    seen = {s["target"]: s["value"] for s in collected if s["source"] == "instance" and s["metric"] == "up"}
    assert seen == {"web/web-1": 1.0, "web/web-2": 1.0}, seen
    assert {s["target"] for s in collected if s["metric"] == "container_cpu_percent"} <= set(seen)
    assert {s["target"] for s in collected if s["metric"] == "container_memory_bytes"} == set(seen)


def test_drain_one_container_then_restart(compose_stack: dict[str, Any]) -> None:
    config: FleetConfig = compose_stack["config"]
    service = config.service("web")
    store = Store(config.store_url)
    actions = FleetActions(config, store)
    backend = actions.orchestrator(service)
    nginx = actions.balancer(service)
    assert nginx is not None
    backend.wait_healthy(service, backend.list(service)[0])
    _ok(actions.undrain(OPERATOR, "web-1"))
    _ok(actions.scale(OPERATOR, "web", 2))
    wait_http(f"http://127.0.0.1:{compose_stack['nginx_port']}/livez", timeout_s=20)
    web2 = next(r for r in backend.live(service) if r.instance_id == "web-2")
    with PostLoad(compose_stack["nginx_port"], workers=2) as load:
        time.sleep(0.5)
        drained = _ok(actions.drain(OPERATOR, "web-2"))
        assert _upstream_states(nginx)[web2.address] == DOWN
        # web-1 is now the last replica in rotation: it is never drained
        last = actions.drain(OPERATOR, "web-1")
        assert last.result == "refused" and "min_healthy" in (last.error or ""), last.detail
        assert actions.drain(OPERATOR, "web-2").result == "noop"
        time.sleep(0.5)
        # a drained replica's restart (stop, a replacement, healthy, back in rotation) is invisible to the clients
        restarted = _ok(actions.restart(OPERATOR, "web-2"))
        time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50

    live = backend.live(service)
    assert sorted(r.instance_id for r in live) == sorted(["web-1", restarted.after["new_instance"]])
    assert web2.ref not in {r.ref for r in live}, "the drained container was not replaced"
    assert _upstream_states(nginx) == {r.address: UP for r in live}
    assert _audited(store, drained) == ["started", "ok"]
    assert _audited(store, restarted) == ["started", "ok"]
    assert [row.result for row in store.audit(op_id=last.op_id)] == ["refused"]


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


def test_swarm_service_scaled_up_and_down(swarm: Any, pg_dsn: str, redis_prefix: str, tmp_path: Path) -> None:
    """Scale up, then drain one chosen task in nginx and scale down: the drained task is the one Swarm removes."""
    from docker.types import EndpointSpec, RestartPolicy, ServiceMode

    from actions.backends.nginx import ManagedNginx
    from actions.backends.swarm import SwarmOrchestrator

    port_base = free_port_block(6)
    lb_port = free_port()
    name = f"fdtsw{RUN_ID}"
    database_url = pg_dsn.replace("postgresql://", "postgresql://postgres@", 1) if "@" not in pg_dsn else pg_dsn
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = parse_config(
        {
            "state_dir": str(state_dir),
            "store": {"url": f"sqlite:///{state_dir}/fleetdeck.db"},
            "services": [
                {
                    "name": "web", "backend": "swarm", "compose_service": name, "host": "127.0.0.1",
                    "ports": {"start": port_base, "end": port_base + 5}, "replicas": 2, "min_replicas": 1,
                    "max_replicas": 4, "min_healthy": 1, "stop_grace_s": 5, "boot_timeout_s": 60,
                    "drain_timeout_s": 15,
                }
            ],
            # the managed nginx on the host, in front of the tasks' loopback ports
            "load_balancer": {
                "mode": "managed", "service": "web", "listen": f"127.0.0.1:{lb_port}", "worker_processes": 1,
                "worker_shutdown_timeout_s": 10, "rate_limits": {"enabled": False},
            },
        },
        "test",
        tmp_path,
    )
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
        service = config.service("web")
        store = Store(config.store_url)
        actions = FleetActions(config, store)
        backend = actions.orchestrator(service)
        nginx = actions.balancer(service)
        assert isinstance(backend, SwarmOrchestrator) and isinstance(nginx, ManagedNginx)
        deadline = time.monotonic() + 60
        while len(backend.live(service)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        replicas = backend.live(service)
        assert [(r.instance_id, r.port) for r in replicas] == [("web-1", port_base), ("web-2", port_base + 1)]
        for replica in replicas:
            backend.wait_healthy(service, replica)
        # the tasks are in the replica table, where the instance collector finds its targets
        assert [(r.instance_id, r.backend) for r in store.replicas("web")] == [("web-1", "swarm"), ("web-2", "swarm")]

        # the first undrain starts the managed nginx; the scale-up adds web-3 once it is healthy
        ops = [_ok(actions.undrain(OPERATOR, "web-1")), _ok(actions.undrain(OPERATOR, "web-2"))]
        ops.append(_ok(actions.scale(OPERATOR, "web", 3)))
        added = next(r for r in backend.live(service) if r.instance_id == "web-3")
        assert added.port == port_base + 2
        assert _upstream_states(nginx) == {r.address: UP for r in backend.live(service)}
        wait_http(f"http://127.0.0.1:{lb_port}/livez", timeout_s=20)

        with PostLoad(lb_port, workers=2) as load:
            time.sleep(0.5)
            drained = _ok(actions.drain(OPERATOR, "web-2"))
            assert _upstream_states(nginx)[f"127.0.0.1:{port_base + 1}"] == DOWN
            time.sleep(0.5)
            # the chosen (drained) task is the one removed, not Swarm's pick: scale-down takes out-of-rotation
            # replicas first, and the backend stops that task before lowering the replica count
            ops += [drained, _ok(actions.scale(OPERATOR, "web", 2))]
            time.sleep(0.5)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 50

        live = backend.live(service)
        assert sorted(r.instance_id for r in live) == ["web-1", "web-3"]
        # the tasks kept were never replaced: scaling once re-sent the spec with Swarm's defaults filled in, so
        # Swarm rolled every task over to "the new spec" and stopped web-1 under load (a 502)
        tasks_per_slot = Counter(int(t.get("Slot") or 0) for t in swarm.services.get(name).tasks())
        assert tasks_per_slot[1] == 1 and tasks_per_slot[3] == 1, tasks_per_slot
        assert backend.desired_replicas(backend.swarm_service(service)) == 2
        assert _upstream_states(nginx) == {r.address: UP for r in live}
        assert sorted(r.instance_id for r in store.replicas("web")) == ["web-1", "web-3"]
        for op in ops:
            assert _audited(store, op) == ["started", "ok"], op.detail
    finally:
        ManagedNginx(config).stop()  # by the pid in its own pid file; a no-op when it never started
        swarm.services.get(name).remove()
        deadline = time.monotonic() + 30  # sparse below: no inspect of a container being removed (404)
        while time.monotonic() < deadline and swarm.containers.list(
            all=True, sparse=True, filters={"label": f"com.docker.swarm.service.name={name}"}
        ):
            time.sleep(0.5)
