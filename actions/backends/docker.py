"""Docker backend: a service's replicas are the containers of one Docker Compose service.

Replicas are found by Compose's labels (`com.docker.compose.project`, `.service`, `.container-number`), so
containers made by `docker compose up --scale` and by fleetdeck are one set. The Docker SDK cannot scale a Compose
service, so scaling up clones a replica's configuration (same image id, env, mounts, networks, healthcheck) under
the next container-number; scaling down stops one replica with a grace period (SIGTERM, then SIGKILL) and removes
it. Draining is the load balancer's job (actions/operations/drain.py) and happens before `stop`.

Where a clone listens:
- on host networking every replica needs its own port: the clone gets `PORT=<free port of service.ports>` (the
  sample app's image reads PORT) and the replica's address is `service.host:PORT`;
- on a bridge network every replica keeps the image's port and the address is the container's IP on that network
  (only fleetdeck running in a container on the same network can reach it).

Also here: container CPU and memory as samples (docs/design-notes.md#orchestrators) and reloading an nginx that
runs in a container.

Size (~690 lines): one backend class on the Docker SDK and the container helpers only it uses (clone spec,
stats, reloading an nginx container); it implements the same Orchestrator protocol as local.py and swarm.py.
"""

from __future__ import annotations

import argparse
import builtins
import concurrent.futures
import contextlib
import json
import logging
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.models.containers import Container

from actions.backends.base import (
    DEAD,
    LIVE_STATES,
    RUNNING,
    STARTING,
    STOPPED,
    BackendError,
    Refused,
    Replica,
    ReplicaUnhealthy,
)
from core.config import FleetConfig, ServiceConfig
from core.process import http_get, port_is_free
from core.samples import Sample

if TYPE_CHECKING:  # the store is optional: the backend works without one (tests, `reload-nginx` command)
    from core.store import OpsRecords

log = logging.getLogger(__name__)

BACKEND = "docker"

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ONEOFF = "com.docker.compose.oneoff"
# fleetdeck's own labels on the containers it creates: where the clone listens and whom it was cloned from
LABEL_PORT = "dev.fleetdeck.port"
LABEL_INSTANCE = "dev.fleetdeck.instance-id"
LABEL_CLONED_FROM = "dev.fleetdeck.cloned-from"

# Config keys of `docker inspect` that describe how to run the container and can be posted back to create one.
# Hostname and Domainname are left out so each clone gets its own (on a bridge network the hostname is the id).
CLONED_CONFIG_KEYS = (
    "User", "Env", "Cmd", "Entrypoint", "WorkingDir", "Labels", "Healthcheck", "StopSignal", "StopTimeout",
    "ExposedPorts", "Volumes", "Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr",
    "ArgsEscaped", "OnBuild", "Shell",
)


def _env_map(env: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in env or []:
        key, _, value = item.partition("=")
        pairs[key] = value
    return pairs


def _env_list(env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def parse_docker_time(text: str | None) -> float:
    """Docker's RFC 3339 timestamps carry nanoseconds, which datetime cannot parse: cut them to microseconds."""
    match = _DOCKER_TIME.match(text or "")
    if not match or match.group(1).startswith("0001-"):
        return 0.0  # absent, or Go's zero time for "never started"
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}").timestamp()


def connect_docker(client: docker.DockerClient | None = None) -> docker.DockerClient:
    """The given client, else one from the environment (DOCKER_HOST or the local socket), checked with a ping."""
    try:
        client = client or docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise BackendError(f"cannot reach the Docker daemon: {error}") from None
    return client


def http_status(url: str, timeout_s: float) -> int:
    """The HTTP status of a GET (0 when nothing answered)."""
    return http_get(url, timeout_s)[0]


def cpu_percent(stats: dict[str, Any]) -> float | None:
    """CPU% = Δcpu_usage.total_usage / Δsystem_cpu_usage × online_cpus × 100 (`docker stats` does the same).

    None when the daemon gave no previous reading to take a difference from (a container that just started).
    """
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except (KeyError, TypeError):
        return None
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    if system_delta <= 0 or cpu_delta < 0:
        return None
    return cpu_delta / system_delta * online * 100.0


def memory_bytes(stats: dict[str, Any]) -> float | None:
    """Memory = usage − inactive_file: the page cache the kernel can drop does not count (cgroup v1 and v2 keys)."""
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if usage is None:
        return None
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return float(max(0, usage - inactive))


def recorded_states(store: OpsRecords | None, backend: str, service: str) -> dict[str, str]:
    """instance id → state of the store's replica records of one service and backend ({} without a store)."""
    if store is None:
        return {}
    return {r.instance_id: r.state for r in store.replicas(service) if r.backend == backend}


def mirror_replicas(
    store: OpsRecords | None, backend: str, service: str, replicas: list[Replica], recorded: dict[str, str]
) -> None:
    """Make the store's replica table say what the daemon said: upsert changed replicas, drop vanished ones.

    `recorded` must have been read before the daemon was asked (see DockerOrchestrator.list). Records of other
    backends under the same service name are not touched.
    """
    if store is None:
        return
    from core.store import ReplicaRecord

    for replica in replicas:
        if recorded.get(replica.instance_id) != replica.state:
            store.upsert_replica(
                ReplicaRecord(
                    service=replica.service, instance_id=replica.instance_id, backend=backend, host=replica.host,
                    port=replica.port, pid=replica.pid, state=replica.state, started_at=replica.started_at,
                    ref=replica.ref,
                )
            )
    listed = {r.instance_id for r in replicas}
    for instance_id in recorded.keys() - listed:
        # removed by `docker rm`, `compose down` or Swarm: a stale record would make the collectors poll an
        # address nobody answers (or, worse, a later replica on the same port under the old name)
        store.remove_replica(service, instance_id)


class DockerOrchestrator:
    """The Orchestrator protocol (list/start/stop) over the containers of one Compose service, plus restart."""

    def __init__(
        self,
        config: FleetConfig | None = None,
        store: OpsRecords | None = None,
        client: docker.DockerClient | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.client = connect_docker(client)

    @staticmethod
    def port_capacity(service: ServiceConfig) -> int | None:
        """None: the daemon places the replicas; the port range does not bound their number."""
        return None

    # -- identity

    @staticmethod
    def project(service: ServiceConfig) -> str:
        if not service.compose_project:
            raise BackendError(f"service '{service.name}' (backend docker) needs compose_project in fleet.yaml")
        return service.compose_project

    @staticmethod
    def compose_service(service: ServiceConfig) -> str:
        return service.compose_service or service.name

    @staticmethod
    def number_of(container: Container) -> int:
        try:
            return int(container.labels.get(LABEL_NUMBER, "0"))
        except ValueError:
            return 0

    @staticmethod
    def instance_id(service: ServiceConfig, number: int) -> str:
        return f"{service.name}-{number}"

    def containers(self, service: ServiceConfig) -> list[Container]:
        """Every container of the Compose service, stopped ones included, one-off `run` containers excluded."""
        labels = [f"{LABEL_PROJECT}={self.project(service)}", f"{LABEL_SERVICE}={self.compose_service(service)}"]
        filters = {"label": labels}
        try:
            found = self.client.containers.list(all=True, filters=filters)
        except docker.errors.DockerException as error:
            raise BackendError(f"cannot list containers of '{service.name}': {error}") from None
        mine = [c for c in found if c.labels.get(LABEL_ONEOFF, "False") != "True"]
        return sorted(mine, key=self.number_of)

    def container(self, service: ServiceConfig, instance_id: str) -> Container:
        for candidate in self.containers(service):
            if self.instance_id(service, self.number_of(candidate)) == instance_id:
                return candidate
        raise Refused(f"'{instance_id}' is not a container of '{service.name}'")

    # -- addresses

    @staticmethod
    def on_host_network(container: Container) -> bool:
        return str(container.attrs.get("HostConfig", {}).get("NetworkMode", "")) == "host"

    @staticmethod
    def port_of(container: Container, service: ServiceConfig) -> int:
        """PORT env, else PORT_BASE (+ TASK_SLOT − 1), else fleetdeck's label, else the first exposed port."""
        env = _env_map(container.attrs.get("Config", {}).get("Env"))
        with contextlib.suppress(ValueError):
            if env.get("PORT"):
                return int(env["PORT"])
            if env.get("PORT_BASE"):
                slot = int(env["TASK_SLOT"]) if env.get("TASK_SLOT", "").isdigit() else 1
                return int(env["PORT_BASE"]) + slot - 1
            if container.labels.get(LABEL_PORT):
                return int(container.labels[LABEL_PORT])
        exposed = container.attrs.get("Config", {}).get("ExposedPorts") or {}
        for key in exposed:
            number = key.split("/", 1)[0]
            if number.isdigit():
                return int(number)
        return service.ports.start

    def host_of(self, container: Container, service: ServiceConfig) -> str:
        if self.on_host_network(container):
            return service.host
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        for network in networks.values():
            if network.get("IPAddress"):
                return str(network["IPAddress"])
        return service.host

    @staticmethod
    def state_of(container: Container) -> str:
        state = container.attrs.get("State", {})
        status = state.get("Status", container.status)
        if status == "running":
            health = (state.get("Health") or {}).get("Status")
            return STARTING if health == "starting" else RUNNING
        if status in ("created", "restarting"):
            return STARTING
        if status == "exited" and state.get("ExitCode", 0) == 0 and not state.get("OOMKilled"):
            return STOPPED
        if status in ("paused", "removing"):
            return STOPPED
        return DEAD  # exited non-zero, OOM-killed, or Docker's own "dead"

    def to_replica(self, container: Container, service: ServiceConfig) -> Replica:
        state = container.attrs.get("State", {})
        return Replica(
            service=service.name,
            instance_id=self.instance_id(service, self.number_of(container)),
            host=self.host_of(container, service),
            port=self.port_of(container, service),
            pid=int(state.get("Pid") or 0) or None,
            state=self.state_of(container),
            started_at=parse_docker_time(state.get("StartedAt")) or parse_docker_time(container.attrs.get("Created")),
            ref=container.id,
        )

    # -- the registry mirror (the dashboard reads replicas from the store; Docker stays the source of truth)

    def _record(self, replica: Replica) -> None:
        mirror_replicas(self.store, BACKEND, replica.service, [replica], {})

    def _event(self, kind: str, target: str, message: str, details: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.add_event(kind, target, message, details)

    def _recorded_states(self, service: ServiceConfig) -> dict[str, str]:
        return recorded_states(self.store, BACKEND, service.name)

    # -- Orchestrator protocol

    def list(self, service: ServiceConfig) -> list[Replica]:
        """Every container of the service as a replica; the store's replica table is brought in line with it.

        The collectors find instance targets in that table only, so this mirror is what lets them see containers
        Compose started (not fleetdeck) and forget containers removed behind fleetdeck's back.
        """
        # read before listing: a record written after this read belongs to a container the listing may miss,
        # and must not be pruned as "gone"
        recorded = self._recorded_states(service)
        replicas: list[Replica] = []
        for container in self.containers(service):
            replica = self.to_replica(container, service)
            # draining is fleetdeck's word, not Docker's: keep it while the container still runs
            if recorded.get(replica.instance_id) == "draining" and replica.state in LIVE_STATES:
                replica = replica._replace(state="draining")
            replicas.append(replica)
        mirror_replicas(self.store, BACKEND, service.name, replicas, recorded)
        return replicas

    def live(self, service: ServiceConfig) -> builtins.list[Replica]:
        return [r for r in self.list(service) if r.state in LIVE_STATES]

    def _taken_ports(self) -> set[int]:
        """Ports fleetdeck's running containers use, over every service, so two services never collide."""
        taken: set[int] = set()
        try:
            running = self.client.containers.list(filters={"label": LABEL_PROJECT})
        except docker.errors.DockerException:
            return taken
        for container in running:
            env = _env_map(container.attrs.get("Config", {}).get("Env"))
            if env.get("PORT", "").isdigit():
                taken.add(int(env["PORT"]))
            if container.labels.get(LABEL_PORT, "").isdigit():
                taken.add(int(container.labels[LABEL_PORT]))
        return taken

    def _free_port(self, service: ServiceConfig) -> int:
        taken = self._taken_ports()
        for port in service.ports.ports():
            if port not in taken and port_is_free(service.host, port):
                return port
        raise Refused(
            f"no free port for '{service.name}' in {service.ports.start}-{service.ports.end}"
            " (all used by replicas or other programs)"
        )

    @staticmethod
    def clone_name(template: Container, project: str, compose_service: str, number: int) -> str:
        """Compose v1 names containers project_service_N, v2 project-service-N: follow the template's style."""
        name = template.name.lstrip("/")
        old = template.labels.get(LABEL_NUMBER, "")
        for separator in ("_", "-"):
            if old and name.endswith(f"{separator}{old}"):
                return f"{name[: -len(old)]}{number}"
        return f"{project}_{compose_service}_{number}"

    def clone_spec(self, template: Container, service: ServiceConfig, number: int, port: int | None) -> dict[str, Any]:
        """The create-container body for a copy of `template` under container-number `number`."""
        attrs = template.attrs
        source = attrs["Config"]
        config: dict[str, Any] = {k: source[k] for k in CLONED_CONFIG_KEYS if source.get(k) is not None}
        instance_id = self.instance_id(service, number)
        env = _env_map(config.get("Env"))
        env["INSTANCE_ID"] = instance_id
        env.pop("TASK_SLOT", None)
        labels = dict(config.get("Labels") or {})
        labels[LABEL_NUMBER] = str(number)
        labels[LABEL_INSTANCE] = instance_id
        labels[LABEL_CLONED_FROM] = template.name.lstrip("/")
        if port is not None:
            env["PORT"] = str(port)
            labels[LABEL_PORT] = str(port)
        config["Env"] = _env_list(env)
        config["Labels"] = labels
        # the exact image the siblings run, even if the tag has been rebuilt since: a clone is a copy
        config["Image"] = attrs["Image"]
        host_config = dict(attrs["HostConfig"])
        # a published host port can be bound once only: a clone must not ask for it again
        host_config.pop("PortBindings", None)
        host_config.pop("ContainerIDFile", None)
        config["HostConfig"] = host_config
        network_mode = str(host_config.get("NetworkMode", ""))
        networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
        if network_mode not in ("host", "none") and not network_mode.startswith("container:") and networks:
            first = network_mode if network_mode in networks else next(iter(networks))
            config["NetworkingConfig"] = {"EndpointsConfig": {first: self._endpoint(template, networks[first])}}
        return config

    @staticmethod
    def _endpoint(template: Container, endpoint: dict[str, Any]) -> dict[str, Any]:
        # the service-name alias makes the clone reachable under the same DNS name; drop the template's own id alias
        aliases = [a for a in endpoint.get("Aliases") or [] if not template.id.startswith(a)]
        return {"Aliases": aliases}

    def start(self, service: ServiceConfig) -> Replica:
        containers = self.containers(service)
        live = [c for c in containers if self.state_of(c) in LIVE_STATES]
        if len(live) >= service.max_replicas:
            raise Refused(
                f"service '{service.name}' already runs {len(live)} replicas (max_replicas {service.max_replicas})"
            )
        if not live:
            raise Refused(
                f"no running container of compose service {self.project(service)}/{self.compose_service(service)}"
                " to clone: start the stack first (docker compose up -d)"
            )
        template = live[0]
        # the next container-number, as Compose would pick it; stopped containers keep theirs
        number = max((self.number_of(c) for c in containers), default=0) + 1
        port = self._free_port(service) if self.on_host_network(template) else None
        spec = self.clone_spec(template, service, number, port)
        name = self.clone_name(template, self.project(service), self.compose_service(service), number)
        try:
            created = self.client.api.create_container_from_config(spec, name=name)
            clone = self.client.containers.get(created["Id"])
            networks = template.attrs.get("NetworkSettings", {}).get("Networks") or {}
            for network_name, endpoint in networks.items():
                if network_name not in spec.get("NetworkingConfig", {}).get("EndpointsConfig", {}) and \
                        "NetworkingConfig" in spec:
                    self.client.api.connect_container_to_network(
                        clone.id, network_name, aliases=self._endpoint(template, endpoint)["Aliases"]
                    )
            clone.start()
            clone.reload()
        except docker.errors.DockerException as error:
            raise BackendError(f"cannot start a clone of {template.name} as {name}: {error}") from None
        replica = self.to_replica(clone, service)
        self._record(replica)
        self._event(
            "replica.start", f"{service.name}/{replica.instance_id}",
            f"cloned {template.name} as {name} ({replica.address})",
            {"container": clone.id, "name": name, "port": replica.port, "template": template.name},
        )
        log.info("started %s as container %s on %s", replica.instance_id, name, replica.address)
        return replica

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        """SIGTERM (the image's stop signal), SIGKILL after the grace period, then remove the container.

        Removed, not just stopped: a stopped container would come back on the next `docker compose up` and keep
        its container-number forever.
        """
        container = self.container(service, instance_id)
        replica = self.to_replica(container, service)
        grace = service.stop_grace_s if grace_s is None else grace_s
        started = time.monotonic()
        try:
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=max(0, round(grace)))
            container.reload()
            exit_code = container.attrs.get("State", {}).get("ExitCode")
            container.remove(v=True)  # anonymous volumes only; named volumes are the operator's
        except docker.errors.NotFound:
            exit_code = None  # removed meanwhile (auto-remove, or somebody else): it is gone either way
        except docker.errors.DockerException as error:
            raise BackendError(f"cannot stop {instance_id} ({container.name}): {error}") from None
        took = time.monotonic() - started
        # 137 = SIGKILL: the grace period ran out before the app finished its in-flight work
        outcome = "killed after the grace period" if exit_code == 137 else f"exited {exit_code}"
        if self.store is not None:
            self.store.remove_replica(service.name, instance_id)
        self._event(
            "replica.stop", f"{service.name}/{instance_id}", f"stopped and removed ({outcome}, {took:.1f}s)",
            {"container": container.id, "exit_code": exit_code, "grace_s": grace, "took_s": round(took, 2)},
        )
        log.info("stopped %s (%s) %s", instance_id, container.name, outcome)
        return replica._replace(state=STOPPED)

    def restart(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        """Stop (SIGTERM, SIGKILL after the grace period) and start the same container again."""
        container = self.container(service, instance_id)
        grace = service.stop_grace_s if grace_s is None else grace_s
        try:
            container.restart(timeout=max(0, round(grace)))
            container.reload()
        except docker.errors.DockerException as error:
            raise BackendError(f"cannot restart {instance_id} ({container.name}): {error}") from None
        replica = self.to_replica(container, service)
        self._record(replica)
        self._event("replica.restart", f"{service.name}/{instance_id}", f"restarted {container.name}",
                    {"container": container.id, "grace_s": grace})
        return replica

    # -- health

    def log_tail(self, container: Container, lines: int = 30) -> str:
        with contextlib.suppress(docker.errors.DockerException):
            return container.logs(tail=lines).decode(errors="replace")
        return ""

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        """Poll the ready path (then the health path) until 200; ReplicaUnhealthy with the log tail otherwise."""
        timeout = service.boot_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        paths = [p for p in (service.health.ready, service.health.path) if p]
        last = "no answer"
        container = self.client.containers.get(replica.ref)
        while time.monotonic() < deadline:
            container.reload()
            if container.status not in ("running", "created", "restarting"):
                raise ReplicaUnhealthy(
                    f"{replica.instance_id} exited during start-up ({container.status})", replica.instance_id,
                    self.log_tail(container),
                )
            for path in paths:
                status = http_status(f"{replica.base_url}{path}", min(2.0, service.health.timeout_s))
                if status == 200:
                    ready = replica._replace(state=RUNNING)
                    self._record(ready)
                    return ready
                if status == 404:
                    continue
                last = f"{path} answered {status}" if status else f"{path}: no answer"
                break
            time.sleep(0.2)
        raise ReplicaUnhealthy(
            f"{replica.instance_id} did not become healthy within {timeout:.0f}s ({last})", replica.instance_id,
            self.log_tail(container),
        )

    # -- resource samples

    def stats_samples(self, service: ServiceConfig, now: float | None = None) -> builtins.list[Sample]:
        """Container CPU % and memory of every running replica (one stats call each, all in parallel: each takes
        ~1 s because the daemon waits for a second reading to take the CPU difference from, and the collector's
        timeout must not grow with the replica count)."""
        running = [c for c in self.containers(service) if c.status == "running"]

        def one(container: Container) -> list[Sample]:
            target = f"{service.name}/{self.instance_id(service, self.number_of(container))}"
            ts = now or time.time()
            try:
                stats = container.stats(stream=False)
            except docker.errors.DockerException as error:
                log.warning("stats of %s failed: %s", container.name, error)
                return []
            samples: list[Sample] = []
            cpu = cpu_percent(stats)
            if cpu is not None:
                samples.append(Sample("instance", target, "container_cpu_percent", round(cpu, 3), ts, "percent"))
            memory = memory_bytes(stats)
            if memory is not None:
                samples.append(Sample("instance", target, "container_memory_bytes", memory, ts, "bytes"))
            limit = (stats.get("memory_stats") or {}).get("limit")
            if limit:
                samples.append(Sample("instance", target, "container_memory_limit_bytes", float(limit), ts, "bytes"))
            return samples

        if not running:
            return []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(running))) as pool:
            return [s for batch in pool.map(one, running) for s in batch]


# --- nginx in a container --------------------------------------------------------------------------------------


def find_compose_container(client: docker.DockerClient, project: str, compose_service: str) -> Container:
    running = client.containers.list(
        filters={"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={compose_service}"], "status": "running"}
    )
    if not running:
        raise BackendError(f"no running container of {project}/{compose_service}")
    return sorted(running, key=DockerOrchestrator.number_of)[0]


def nginx_worker_pids(container: Container) -> set[int]:
    """PIDs (host namespace) of the nginx worker processes in `container`, from the daemon's `top`."""
    top = container.top()
    titles = [str(t).upper() for t in top.get("Titles") or []]
    pid_at = titles.index("PID")
    cmd_at = next(i for i, t in enumerate(titles) if t in ("CMD", "COMMAND", "ARGS"))
    pids: set[int] = set()
    for row in top.get("Processes") or []:
        if len(row) > cmd_at and "nginx: worker process" in " ".join(row[cmd_at:]) and str(row[pid_at]).isdigit():
            pids.add(int(row[pid_at]))
    return pids


def wait_workers_gone(container: Container, old: set[int], timeout_s: float, poll_s: float = 0.05) -> set[int]:
    """Wait until none of the `old` worker PIDs is left; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    left = set(old)
    while left:
        left &= nginx_worker_pids(container)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return left


def reload_nginx_container(
    client: docker.DockerClient,
    project: str,
    compose_service: str = "nginx",
    method: str = "exec",
    wait_old_workers_s: float = 0.0,
) -> str:
    """Validate then reload an nginx that runs in a container; raise BackendError (nothing reloaded) on failure.

    method "exec": `nginx -t` then `nginx -s reload` inside the container; "signal": `nginx -t` then SIGHUP to the
    container's PID 1 (the nginx master), for images whose nginx is PID 1 and can exec nothing else.

    With `wait_old_workers_s` > 0 it returns only once the workers of the previous generation have exited (or the
    time is up): `nginx -s reload` returns as soon as the signal is sent, and until the old workers are gone they
    may still accept requests for a server the new configuration marks down. This is the external nginx's
    equivalent of ManagedNginx's generation check plus old-worker wait, which a drain relies on.
    """
    container = find_compose_container(client, project, compose_service)
    test = container.exec_run(["nginx", "-t"])
    if test.exit_code != 0:
        raise BackendError(f"nginx -t failed in {container.name}: {test.output.decode(errors='replace').strip()}")
    old: set[int] = set()
    if wait_old_workers_s > 0:
        try:
            old = nginx_worker_pids(container)
        except (docker.errors.DockerException, ValueError, StopIteration) as error:
            log.warning("cannot list nginx workers in %s (not waiting for them): %s", container.name, error)
    if method == "signal":
        container.kill(signal="SIGHUP")
        done = f"nginx in {container.name} validated and sent SIGHUP"
    else:
        reload = container.exec_run(["nginx", "-s", "reload"])
        if reload.exit_code != 0:
            raise BackendError(
                f"nginx -s reload failed in {container.name}: {reload.output.decode(errors='replace')}"
            )
        done = f"nginx in {container.name} validated and reloaded"
    if not old:
        return done
    started = time.monotonic()
    try:
        left = wait_workers_gone(container, old, wait_old_workers_s)
    except (docker.errors.DockerException, ValueError, StopIteration) as error:
        return f"{done} (could not watch the old workers: {error})"
    if left:
        # the new configuration is live either way; the caller's drain still waits for in-flight requests
        return f"{done}; {len(left)} old worker(s) still finishing after {wait_old_workers_s:g}s"
    return f"{done}; the {len(old)} old worker(s) exited after {time.monotonic() - started:.2f}s"


def main(argv: list[str] | None = None) -> int:
    """`python -m actions.backends.docker reload-nginx --project P [--service nginx]`: a `reload_command` for an
    external nginx that runs in a container (load_balancer.mode: external)."""
    parser = argparse.ArgumentParser(prog="python -m actions.backends.docker")
    verbs = parser.add_subparsers(dest="verb", required=True)
    reload = verbs.add_parser("reload-nginx", help="nginx -t, then reload, inside the nginx container")
    reload.add_argument("--project", required=True, help="the Compose project")
    reload.add_argument("--service", default="nginx", help="the Compose service of nginx (default: nginx)")
    reload.add_argument("--method", choices=("exec", "signal"), default="exec")
    reload.add_argument(
        "--wait-old-workers", type=float, default=10.0, metavar="S",
        help="return only once the previous generation's workers exited, at most S seconds (0: do not wait)",
    )
    listing = verbs.add_parser("list", help="the containers of a Compose service, as fleetdeck sees them")
    listing.add_argument("--project", required=True)
    listing.add_argument("--service", required=True)
    args = parser.parse_args(argv)
    try:
        client = docker.from_env()
        if args.verb == "reload-nginx":
            print(reload_nginx_container(client, args.project, args.service, args.method,
                                         args.wait_old_workers))
            return 0
        for container in sorted(
            client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={args.project}",
                                                                 f"{LABEL_SERVICE}={args.service}"]}),
            key=DockerOrchestrator.number_of,
        ):
            print(json.dumps({"name": container.name, "number": DockerOrchestrator.number_of(container),
                              "status": container.status, "id": container.short_id}))
        return 0
    except (BackendError, docker.errors.DockerException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
