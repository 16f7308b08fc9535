"""Types every action backend shares: replicas, orchestrators, load balancers and errors.

Exception tree (every action error derives from FleetdeckActionError so the CLI and the dashboard can show
one clear message without a traceback):

    FleetdeckActionError          base class; the message is meant for the operator
    ├── Refused                   a precondition failed (min healthy, port range exhausted, lock busy); nothing changed
    ├── BackendError              the orchestrator could not start/stop/inspect a replica
    │   └── ReplicaUnhealthy      a replica started but never became ready; carries the tail of its log
    ├── NginxError                render, `nginx -t`, reload or verification failed; the previous config is back
    └── FleetError                `fleetdeck up/down` could not complete (wraps the cause in its message)
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from core.config import ServiceConfig

# Replica states, in the order a replica's life goes through them.
STARTING = "starting"
RUNNING = "running"
DRAINING = "draining"
STOPPED = "stopped"
DEAD = "dead"
LIVE_STATES = frozenset({STARTING, RUNNING, DRAINING})

# Upstream server states as written to upstream.json; draining and down both render as nginx `down`.
UP = "up"
DOWN = "down"
UPSTREAM_STATES = frozenset({UP, DRAINING, DOWN})


class FleetdeckActionError(Exception):
    """Base of every error an action raises; str(error) is the message shown to the operator."""

    # The end of the affected replica's log when the backend has one to show (ReplicaUnhealthy); empty otherwise.
    log_tail: str = ""


class Refused(FleetdeckActionError):
    """The action was not attempted because a precondition failed; nothing was changed."""


class BackendError(FleetdeckActionError):
    """The orchestrator backend failed to start, stop or inspect a replica."""


class ReplicaUnhealthy(BackendError):
    """A replica was started but did not become ready in time; `log_tail` holds the end of its log."""

    def __init__(self, message: str, instance_id: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.log_tail = log_tail


class NginxError(FleetdeckActionError):
    """Rendering, validating, reloading or verifying nginx failed; nginx keeps its last good config."""


class FleetError(FleetdeckActionError):
    """`up`/`down` could not complete; the message names the step and the cause."""


class Replica(NamedTuple):
    service: str
    instance_id: str
    host: str
    port: int
    pid: int | None
    state: str  # starting | running | draining | stopped | dead
    started_at: float
    ref: str  # backend handle: pid, container id, task id

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class UpstreamServer(NamedTuple):
    address: str  # host:port
    state: str  # up | draining | down (draining = down while in-flight requests finish)
    instance_id: str = ""


@runtime_checkable
class Orchestrator(Protocol):
    """Where a service's replicas run. Every backend implements all of it, so no caller probes for a method."""

    def list(self, service: ServiceConfig) -> builtins.list[Replica]:
        """Every replica the backend knows of, in any state (stopped and dead ones included)."""
        ...

    def live(self, service: ServiceConfig) -> builtins.list[Replica]:
        """The replicas in a LIVE_STATES state."""
        ...

    def start(self, service: ServiceConfig) -> Replica:
        """Start one new replica; returns once it is started (not yet healthy)."""
        ...

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica: ...

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        """Block until the replica answers its health check (bounded by `boot_timeout_s` unless `timeout_s`);
        ReplicaUnhealthy (with the log tail) or Refused when it does not."""
        ...


@dataclass
class ApplyResult:
    """What one load-balancer apply did. `ok` False means the previous configuration is still in force."""

    ok: bool
    generation: int  # the generation now serving (the new one on success, the previous one on failure)
    previous_generation: int
    servers: list[UpstreamServer]
    detail: str = ""
    duration_s: float = 0.0
    rolled_back: bool = False

    def raise_for_failure(self) -> ApplyResult:
        if not self.ok:
            raise NginxError(self.detail)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "generation": self.generation,
            "previous_generation": self.previous_generation,
            "servers": [s._asdict() for s in self.servers],
            "detail": self.detail,
            "duration_s": round(self.duration_s, 3),
            "rolled_back": self.rolled_back,
        }


@runtime_checkable
class LoadBalancer(Protocol):
    def apply(self, servers: list[UpstreamServer]) -> ApplyResult:
        """Render, `nginx -t`, reload, verify; roll back on failure."""
        ...

    def current(self) -> list[UpstreamServer]: ...

    def generation(self) -> int:
        """The configuration generation now recorded as applied (0 before the first apply)."""
        ...

    def old_generation_workers(self) -> int:
        """Workers of an older generation still finishing requests after a reload; 0 when there is no way to see
        them (an external nginx is not ours to inspect)."""
        ...
