"""Reconcile: bring the store's replica registry in line with the backends that can run replicas fleetdeck did not
start itself.

The instance collector finds its targets in the replica registry only. The local backend writes every replica it
starts there; a Docker Compose project also has the containers Compose started, which the registry learns about
only when the Docker backend lists them (`DockerOrchestrator.list` mirrors what it finds). The collector scheduler
runs this before it refreshes its targets, so those containers are collected too.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

from actions.backends import DOCKER
from core.config import FleetConfig, ServiceConfig
from core.store import OpsRecords

if TYPE_CHECKING:  # the Docker SDK is imported only when a Docker-backed service is configured
    from actions.backends.docker import DockerOrchestrator

log = logging.getLogger(__name__)

# Backends whose replicas may exist without fleetdeck having started them.
RECONCILED_BACKENDS = frozenset({DOCKER})


class ReplicaReconciler:
    """Lists every Docker-backed service's replicas (which mirrors them into the store); keeps the daemon
    connection between runs."""

    def __init__(self, config: FleetConfig, store: OpsRecords) -> None:
        self.config = config
        self.store = store
        self._docker: DockerOrchestrator | None = None

    def services(self) -> list[ServiceConfig]:
        return [s for s in self.config.services if s.backend in RECONCILED_BACKENDS]

    def run(self) -> None:
        """One reconcile pass. Never raises: an unreachable daemon is logged and tried again on the next pass (its
        collector reports it as `up` 0)."""
        for service in self.services():
            try:
                self._orchestrator().list(service)
            except Exception as error:  # BackendError, a store hiccup: the next pass tries again
                log.warning("syncing the replicas of %s from Docker: %s", service.name, error)

    def _orchestrator(self) -> DockerOrchestrator:
        if self._docker is None:
            from actions.backends.docker import DockerOrchestrator

            self._docker = DockerOrchestrator(self.config, self.store)
        return self._docker

    def close(self) -> None:
        if self._docker is not None:
            self._docker.client.close()
        self._docker = None

    def __enter__(self) -> ReplicaReconciler:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
