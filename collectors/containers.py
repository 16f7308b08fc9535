"""Container CPU and memory of the Docker backend's services, from the stats API (docs/design-notes.md#orchestrators).

One target per Docker-backed service (``docker:<service>``): one collect asks the daemon for every running
replica's stats in parallel (``DockerOrchestrator.stats_samples``, ~1 s because the daemon waits for a second
reading to take the CPU difference from) and yields, besides its own ``up``/``latency_ms`` (source ``docker``:
"the daemon answered"), source ``instance`` samples ``container_cpu_percent``, ``container_memory_bytes`` and
``container_memory_limit_bytes`` for ``<service>/<instance_id>`` — the same targets the instance collector writes.

The replica table the instance collector reads its targets from is kept in line with the daemon by the scheduler's
reconcile step (actions/backends/reconcile.py), not by this collector.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from actions.backends import DOCKER
from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec
from collectors.clients import CollectorClients
from core.config import FleetConfig, ServiceConfig
from core.samples import Sample

if TYPE_CHECKING:  # the Docker SDK is imported only when a Docker-backed service is configured
    from actions.backends.docker import DockerOrchestrator

SOURCE = "docker"
# The collector's own health. The container samples are source `instance`, built by
# DockerOrchestrator.stats_samples with the units declared in CONTAINER_REGISTRY (for the metric catalogue).
REGISTRY = MetricRegistry(SOURCE, [UP, LATENCY])
CONTAINER_REGISTRY = MetricRegistry("instance", [
    MetricSpec("container_cpu_percent", "percent", "CPU of the replica's container, 100 = one core"),
    MetricSpec("container_memory_bytes", "bytes", "memory of the replica's container (page cache excluded)"),
    MetricSpec("container_memory_limit_bytes", "bytes", "the container's memory limit"),
])


class ContainerTarget(NamedTuple):
    key: str  # "docker:<service>"
    service: str


def docker_services(config: FleetConfig) -> list[ServiceConfig]:
    return [s for s in config.services if s.backend == DOCKER]


class ContainerCollector(CollectorBase[ContainerTarget]):
    """Talks to the Docker daemon through the backend's SDK client, not the shared network clients."""

    name = "containers"
    source = SOURCE
    registry = REGISTRY
    config: FleetConfig  # always given: its targets are the config's Docker services

    def __init__(self, config: FleetConfig, store: Any = None, clients: CollectorClients | None = None) -> None:
        super().__init__(config, clients)
        self.store = store
        self._backend: DockerOrchestrator | None = None

    def _orchestrator(self) -> DockerOrchestrator:
        # made on first use and kept: it holds the daemon connection; BackendError when the daemon is unreachable
        if self._backend is None:
            from actions.backends.docker import DockerOrchestrator

            self._backend = DockerOrchestrator(self.config, self.store)
        return self._backend

    def targets(self) -> list[ContainerTarget]:
        """One target per Docker-backed service (an unreachable daemon shows as `up` 0 of these targets)."""
        return [ContainerTarget(f"docker:{s.name}", s.name) for s in docker_services(self.config)]

    async def collect(self, target: ContainerTarget) -> list[Sample]:
        service = self.config.service(target.service)
        ts = time.time()
        started = time.perf_counter()
        # the Docker SDK blocks: keep it off the shared event loop
        samples = await asyncio.to_thread(lambda: self._orchestrator().stats_samples(service, ts))
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [REGISTRY.sample(target.key, UP.name, 1, ts), REGISTRY.sample(target.key, LATENCY.name, latency_ms, ts),
                *samples]

    async def release(self) -> None:
        if self._backend is not None:
            self._backend.client.close()
        self._backend = None
