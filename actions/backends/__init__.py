"""Orchestrator and load-balancer backends: where replicas run (local processes, PM2, Docker Compose, Swarm) and the
nginx in front of them. `base.py` holds the protocols and types they share.

A service's `backend` setting names its orchestrator; `backend_for()` is the one place that turns the name into
an object. Backend modules are imported on demand so one backend's dependency (the Docker SDK) is only loaded
when a service uses that backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from actions.backends.base import Orchestrator
    from core.config import FleetConfig, ServiceConfig
    from core.store import OpsRecords

# The values of ServiceConfig.backend.
LOCAL = "local"
DOCKER = "docker"
SWARM = "swarm"
PM2 = "pm2"

# backend name -> (module, orchestrator class); every name core.config accepts has an entry (tests check it).
ORCHESTRATORS: dict[str, tuple[str, str]] = {
    LOCAL: ("actions.backends.local", "LocalOrchestrator"),
    DOCKER: ("actions.backends.docker", "DockerOrchestrator"),
    SWARM: ("actions.backends.swarm", "SwarmOrchestrator"),
    PM2: ("actions.backends.pm2", "Pm2Orchestrator"),
}


class OrchestratorClass(Protocol):
    """What every orchestrator class offers before it is instantiated."""

    def __call__(self, config: FleetConfig, store: OpsRecords) -> Orchestrator: ...

    def port_capacity(self, service: ServiceConfig) -> int | None:
        """How many replicas the backend can place (one port of the range each); None when it has no such bound."""
        ...


def orchestrator_class(backend: str) -> OrchestratorClass:
    """The orchestrator class of a backend name; KeyError naming the known ones for an unknown name."""
    try:
        module_name, class_name = ORCHESTRATORS[backend]
    except KeyError:
        raise KeyError(f"unknown backend '{backend}'; known: {', '.join(sorted(ORCHESTRATORS))}") from None
    orchestrator: OrchestratorClass = getattr(importlib.import_module(module_name), class_name)
    return orchestrator


def backend_for(service: ServiceConfig, config: FleetConfig, store: OpsRecords) -> Orchestrator:
    """A new orchestrator for `service`'s backend (callers keep it: it may hold a daemon connection)."""
    return orchestrator_class(service.backend)(config, store)


def port_capacity(service: ServiceConfig) -> int | None:
    """How many replicas the backend can place (one port of the range each); None when it has no such bound."""
    return orchestrator_class(service.backend).port_capacity(service)
