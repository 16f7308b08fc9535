"""The collectors, listed once: which exist, when a fleet wants them, how often they run.

The scheduler and `fleetdeck collect --once` build their collectors from this list; nothing else names them. They
are all built with the same network clients (collectors/clients.py), made once by the caller and injected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from actions.backends import DOCKER, PM2
from collectors.base import Collector
from collectors.clients import CollectorClients
from core.config import CollectorIntervals, FleetConfig
from core.store import Store

# The collector protocol is generic in its target type; the scheduler treats every target alike (by its key).
AnyCollector = Collector[Any]


def _containers(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.containers import ContainerCollector  # imports the Docker SDK: only when needed

    return ContainerCollector(config, store, clients=clients)


def _instances(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.instances import InstanceCollector

    return InstanceCollector(config, store, clients=clients)


def _nginx(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.nginx import NginxCollector

    return NginxCollector(config, clients=clients)


def _bullmq(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.bullmq import BullMQCollector

    return BullMQCollector(config, clients=clients)


def _redis(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.redis_info import RedisInfoCollector

    return RedisInfoCollector(config, clients=clients)


def _postgres(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.postgres import PostgresCollector

    return PostgresCollector(config, clients=clients)


def _pm2(config: FleetConfig, store: Store | None, clients: CollectorClients | None) -> AnyCollector:
    from collectors.pm2 import Pm2Collector  # runs the pm2 CLI: no shared HTTP/Redis client to take

    return Pm2Collector(config, store)


def _always(config: FleetConfig) -> bool:
    return True


def _has_docker_services(config: FleetConfig) -> bool:
    return any(service.backend == DOCKER for service in config.services)


def _has_pm2_services(config: FleetConfig) -> bool:
    return any(service.backend == PM2 for service in config.services)


class CollectorEntry(NamedTuple):
    name: str  # the collector's `name`
    build: Callable[[FleetConfig, Store | None, CollectorClients | None], AnyCollector]
    interval_s: Callable[[CollectorIntervals], float]  # its interval setting
    wanted: Callable[[FleetConfig], bool] = _always  # whether this fleet needs it


COLLECTORS: tuple[CollectorEntry, ...] = (
    CollectorEntry("containers", _containers, lambda i: i.instances_s, _has_docker_services),
    CollectorEntry("pm2", _pm2, lambda i: i.instances_s, _has_pm2_services),
    CollectorEntry("instances", _instances, lambda i: i.instances_s),
    CollectorEntry("nginx", _nginx, lambda i: i.nginx_s),
    CollectorEntry("bullmq", _bullmq, lambda i: i.bullmq_s),
    CollectorEntry("redis", _redis, lambda i: i.redis_s),
    CollectorEntry("postgres", _postgres, lambda i: i.postgres_s),
)


def build_collectors(config: FleetConfig, store: Store | None = None,
                     clients: CollectorClients | None = None) -> list[AnyCollector]:
    """A new instance of every collector this fleet wants, in registry order, all sharing ``clients`` (which the
    caller closes after the collectors). Without ``clients`` each collector makes its own and closes them itself."""
    return [entry.build(config, store, clients) for entry in COLLECTORS if entry.wanted(config)]


def interval_setting(config: FleetConfig, collector_name: str) -> float:
    """The configured interval of a collector (an unknown name gets the instances' interval)."""
    for entry in COLLECTORS:
        if entry.name == collector_name:
            return float(entry.interval_s(config.collectors))
    return float(config.collectors.instances_s)
