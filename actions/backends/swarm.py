"""Swarm backend: a service's replicas are the tasks of one Docker Swarm service.

Swarm scales a service as a whole (`service.scale(n)`) and picks by itself which task goes on a scale-down, so
a drain-then-remove of one chosen task takes three steps: the caller drains the task's instance in nginx, then
`stop` stops that task's container with the grace period (SIGTERM, the app finishes in-flight requests and exits
0) and lowers the replica count at once. Swarm removes the slot whose task is no longer running first (it
prefers non-running tasks), so the drained task is the one that goes; `stop` verifies it and says so otherwise.
Services should use `restart_policy: condition: on-failure` so a clean exit is not restarted meanwhile.

Replicas on host networking need per-task ports: the service sets `PORT_BASE` and `TASK_SLOT={{.Task.Slot}}`
(a Swarm template) and the app listens on PORT_BASE + slot − 1; the instance id is `<service>-<slot>`.
Single-node swarms only for `stop` (it stops the task's container through this node's daemon).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.models.services import Service

from actions.backends.base import DEAD, LIVE_STATES, RUNNING, STARTING, STOPPED, BackendError, Refused, Replica
from actions.backends.docker import (
    _env_map,
    connect_docker,
    http_status,
    mirror_replicas,
    parse_docker_time,
    recorded_states,
)
from core.config import FleetConfig, ServiceConfig

if TYPE_CHECKING:
    from core.store import OpsRecords

log = logging.getLogger(__name__)

BACKEND = "swarm"

# Swarm task states (docker/api/types/swarm/task.go) mapped to fleetdeck's replica states
_TASK_STATES: dict[str, str] = {
    "new": STARTING, "allocated": STARTING, "pending": STARTING, "assigned": STARTING, "accepted": STARTING,
    "preparing": STARTING, "ready": STARTING, "starting": STARTING, "running": RUNNING,
    "complete": STOPPED, "shutdown": STOPPED, "remove": STOPPED,
    "failed": DEAD, "rejected": DEAD, "orphaned": DEAD,
}


class SwarmOrchestrator:
    """The Orchestrator protocol (list/start/stop) over the tasks of one Swarm service, plus scale."""

    def __init__(
        self,
        config: FleetConfig | None = None,
        store: OpsRecords | None = None,
        client: docker.DockerClient | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.config = config
        self.store = store
        self.poll_s = poll_s
        self.client = connect_docker(client)

    @staticmethod
    def port_capacity(service: ServiceConfig) -> int | None:
        """None: the daemon places the replicas; the port range does not bound their number."""
        return None

    # -- identity

    @staticmethod
    def service_name(service: ServiceConfig) -> str:
        """`docker stack deploy` names services <stack>_<service>; a plain `docker service create` uses its name."""
        base = service.compose_service or service.name
        return f"{service.compose_project}_{base}" if service.compose_project else base

    def swarm_service(self, service: ServiceConfig) -> Service:
        try:
            return self.client.services.get(self.service_name(service))
        except docker.errors.NotFound:
            raise BackendError(f"no swarm service '{self.service_name(service)}' for '{service.name}'") from None
        except docker.errors.DockerException as error:
            raise BackendError(f"cannot inspect swarm service '{self.service_name(service)}': {error}") from None

    @staticmethod
    def instance_id(service: ServiceConfig, slot: int) -> str:
        return f"{service.name}-{slot}"

    @staticmethod
    def desired_replicas(swarm_service: Service) -> int:
        mode = swarm_service.attrs["Spec"].get("Mode", {})
        if "Replicated" not in mode:
            raise BackendError(f"swarm service '{swarm_service.name}' is not replicated (global services don't scale)")
        return int(mode["Replicated"].get("Replicas", 0))

    @staticmethod
    def port_of(swarm_service: Service, service: ServiceConfig, slot: int) -> int:
        env = _env_map(swarm_service.attrs["Spec"]["TaskTemplate"].get("ContainerSpec", {}).get("Env"))
        if env.get("PORT_BASE", "").isdigit():
            return int(env["PORT_BASE"]) + slot - 1
        if env.get("PORT", "").isdigit():
            return int(env["PORT"])  # one port for every task: only right on an overlay network
        return service.ports.start + slot - 1

    def _to_replica(self, task: dict[str, Any], swarm_service: Service, service: ServiceConfig) -> Replica:
        slot = int(task.get("Slot") or 0)
        status = task.get("Status", {})
        state = _TASK_STATES.get(str(status.get("State", "")), DEAD)
        if task.get("DesiredState") == "shutdown" and state in LIVE_STATES:
            state = STOPPED  # being shut down by Swarm: no longer a replica to send traffic to
        container_pid = None
        container_id = status.get("ContainerStatus", {}).get("ContainerID")
        pid = status.get("ContainerStatus", {}).get("PID")
        if pid:
            container_pid = int(pid)
        return Replica(
            service=service.name,
            instance_id=self.instance_id(service, slot),
            host=service.host,
            port=self.port_of(swarm_service, service, slot),
            pid=container_pid,
            state=state,
            started_at=parse_docker_time(status.get("Timestamp")) or parse_docker_time(task.get("CreatedAt")),
            ref=str(container_id or task.get("ID", "")),
        )

    def tasks(self, service: ServiceConfig) -> tuple[Service, list[dict[str, Any]]]:
        """The service and its tasks Swarm wants running (one per slot: the newest task of each slot)."""
        swarm_service = self.swarm_service(service)
        newest: dict[int, dict[str, Any]] = {}
        for task in swarm_service.tasks(filters={"desired-state": "running"}):
            slot = int(task.get("Slot") or 0)
            if slot not in newest or task.get("CreatedAt", "") > newest[slot].get("CreatedAt", ""):
                newest[slot] = task
        return swarm_service, [newest[slot] for slot in sorted(newest)]

    # -- Orchestrator protocol

    def list(self, service: ServiceConfig) -> list[Replica]:
        """The tasks Swarm wants running, as replicas; the store's replica table is brought in line with them (the
        collectors discover instance targets there, as they do for the local and Docker backends)."""
        recorded = recorded_states(self.store, BACKEND, service.name)  # before asking Swarm: see mirror_replicas
        swarm_service, tasks = self.tasks(service)
        replicas = [self._to_replica(task, swarm_service, service) for task in tasks]
        mirror_replicas(self.store, BACKEND, service.name, replicas, recorded)
        return replicas

    def live(self, service: ServiceConfig) -> builtins.list[Replica]:
        return [r for r in self.list(service) if r.state in LIVE_STATES]

    def scale(self, service: ServiceConfig, replicas: int, attempts: int = 10) -> None:
        """Set the replica count. An update names the service version it was based on, and Swarm bumps that version
        on its own too (while it reconciles the previous update); "update out of sequence" then only means "read the
        service again and retry", which is what happens here, a few times."""
        for attempt in range(1, attempts + 1):
            swarm_service = self.swarm_service(service)
            try:
                self._update_replicas(swarm_service, replicas)
                return
            except docker.errors.APIError as error:
                if "out of sequence" in str(error) and attempt < attempts:
                    log.info("scaling %s: %s; retrying with the current version", swarm_service.name, error)
                    time.sleep(self.poll_s)
                    continue
                raise BackendError(f"cannot scale '{swarm_service.name}' to {replicas}: {error}") from None
            except docker.errors.DockerException as error:
                raise BackendError(f"cannot scale '{swarm_service.name}' to {replicas}: {error}") from None

    def _update_replicas(self, swarm_service: Service, replicas: int) -> None:
        """Send the service's spec back exactly as stored, with only the replica count changed.

        Not docker-py's `Service.scale()`: it reads the spec with Swarm's defaults filled in and sends that, so the
        task template differs from the one the running tasks were made from, and Swarm rolls every existing task
        over to "the new spec" — stopping replicas nginx still sends requests to (a scale-down then cost a 502,
        and a scale-up replaced the tasks it was meant to keep). `docker service scale` sends the stored spec too.
        """
        spec = swarm_service.attrs["Spec"]
        mode = {key: dict(value) if isinstance(value, dict) else value for key, value in spec["Mode"].items()}
        mode["Replicated"]["Replicas"] = replicas
        self.client.api.update_service(
            swarm_service.id, swarm_service.attrs["Version"]["Index"], name=spec["Name"], labels=spec.get("Labels"),
            mode=mode, task_template=spec["TaskTemplate"], update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"), endpoint_spec=spec.get("EndpointSpec"),
            fetch_current_spec=False,
        )

    def start(self, service: ServiceConfig) -> Replica:
        """Scale up by one and return the new slot's replica once its task runs (not yet healthy)."""
        swarm_service, tasks = self.tasks(service)
        desired = self.desired_replicas(swarm_service)
        if desired >= service.max_replicas:
            raise Refused(
                f"service '{service.name}' already has {desired} replicas (max_replicas {service.max_replicas})"
            )
        known = {int(t.get("Slot") or 0) for t in tasks}
        self.scale(service, desired + 1)
        deadline = time.monotonic() + service.boot_timeout_s
        while time.monotonic() < deadline:
            swarm_service, tasks = self.tasks(service)
            for task in tasks:
                if int(task.get("Slot") or 0) not in known and task.get("Status", {}).get("State") == "running":
                    replica = self._to_replica(task, swarm_service, service)
                    mirror_replicas(self.store, BACKEND, service.name, [replica], {})
                    self._event("replica.start", f"{service.name}/{replica.instance_id}",
                                f"swarm scaled {swarm_service.name} to {desired + 1}", {"task": task.get("ID")})
                    return replica
            time.sleep(self.poll_s)
        raise BackendError(f"swarm started no new task of '{swarm_service.name}' within {service.boot_timeout_s:.0f}s")

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        """Stop the (already drained) task of `instance_id`, then scale down by one so Swarm drops that slot."""
        swarm_service, tasks = self.tasks(service)
        by_id = {self.instance_id(service, int(t.get("Slot") or 0)): t for t in tasks}
        task = by_id.get(instance_id)
        if task is None:
            raise Refused(f"'{instance_id}' is not a task of swarm service '{swarm_service.name}'")
        replica = self._to_replica(task, swarm_service, service)
        desired = self.desired_replicas(swarm_service)
        grace = service.stop_grace_s if grace_s is None else grace_s
        container_id = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
        exit_code: int | None = None
        if container_id:
            try:
                container = self.client.containers.get(container_id)
                container.stop(timeout=max(0, round(grace)))
                container.reload()
                exit_code = container.attrs.get("State", {}).get("ExitCode")
            except docker.errors.NotFound:
                pass  # already gone (other node, or Swarm removed it): the scale-down still applies
            except docker.errors.DockerException as error:
                raise BackendError(f"cannot stop the container of {instance_id}: {error}") from None
        # Swarm removes a slot whose task it has seen stop before running ones, but only once the agent has
        # reported the exit: scale before that and Swarm picks among "running" slots at random.
        # A busy daemon can take well over 10 s to report; scaling before it has would remove a random healthy slot
        # (one that was never drained), so an unreported exit refuses the scale-down instead.
        if not self._wait_task_not_running(swarm_service, str(task.get("ID")), timeout_s=max(30.0, grace + 20.0)):
            raise BackendError(
                f"swarm has not reported {instance_id}'s task stopped (container exit {exit_code}); not scaling down,"
                " so Swarm cannot remove another, undrained slot instead — retry when the daemon is less busy"
            )
        self.scale(service, max(0, desired - 1))
        remaining = self._wait_settled(service, desired - 1, deadline_s=max(10.0, grace + 10.0))
        if instance_id in remaining:
            raise BackendError(
                f"swarm kept {instance_id} (its container exited {exit_code}) and removed another slot instead"
                f" ({sorted(remaining)} remain);"
                " use restart_policy condition on-failure so a stopped task is not restarted"
            )
        expected = {self.instance_id(service, int(t.get("Slot") or 0)) for t in tasks} - {instance_id}
        if remaining != expected:
            # not a silent success: the other replicas are not all running as they were (nginx may point at one
            # that is gone), so the operator has to look
            raise BackendError(
                f"after removing {instance_id} swarm runs {sorted(remaining)}, not {sorted(expected)}:"
                " another task was stopped or replaced meanwhile"
            )
        if self.store is not None:
            self.store.remove_replica(service.name, instance_id)
        self._event("replica.stop", f"{service.name}/{instance_id}",
                    f"stopped (exit {exit_code}) and scaled {swarm_service.name} to {desired - 1}",
                    {"task": task.get("ID"), "exit_code": exit_code, "grace_s": grace})
        return replica._replace(state=STOPPED)

    def _wait_task_not_running(self, swarm_service: Service, task_id: str, timeout_s: float) -> bool:
        """True once Swarm reports the task anything but running (or forgot it); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [t.get("Status", {}).get("State") for t in swarm_service.tasks() if t.get("ID") == task_id]
            if not states or states[0] != "running":
                return True
            time.sleep(self.poll_s)
        return False

    def _wait_settled(self, service: ServiceConfig, replicas: int, deadline_s: float) -> set[str]:
        """Wait until exactly `replicas` slots have a running task; return their instance ids."""
        deadline = time.monotonic() + deadline_s
        live: set[str] = set()
        while time.monotonic() < deadline:
            _swarm_service, tasks = self.tasks(service)
            live = {
                self.instance_id(service, int(t.get("Slot") or 0))
                for t in tasks
                if t.get("Status", {}).get("State") == "running"
            }
            if len(tasks) == replicas and len(live) == replicas:
                return live
            time.sleep(self.poll_s)
        return live

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        timeout = service.boot_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        path = service.health.ready or service.health.path
        while time.monotonic() < deadline:
            if http_status(f"{replica.base_url}{path}", min(2.0, service.health.timeout_s)) == 200:
                return replica._replace(state=RUNNING)
            time.sleep(0.2)
        raise BackendError(f"{replica.instance_id} did not become ready at {replica.base_url}{path} in {timeout:.0f}s")

    def _event(self, kind: str, target: str, message: str, details: dict[str, Any]) -> None:
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.add_event(kind, target, message, details)
