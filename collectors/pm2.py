"""PM2's own view of the services on the PM2 backend: status, cpu, memory, restarts, unstable restarts, uptime.

One target per PM2-backed service (``pm2:<service>``): one ``pm2 jlist`` against fleetdeck's PM2_HOME yields,
besides the collector's own ``up``/``latency_ms`` (source ``pm2``: "the daemon answered"), source ``instance``
samples for ``<service>/<instance_id>`` — the targets the instance collector writes, so they show on the Instances
page next to what the app reports itself:

- ``pm2_status`` (0 online, 1 launching/stopping/waiting restart, 2 stopped/errored; text = PM2's word),
- ``pm2_cpu_percent``, ``pm2_memory_bytes`` (PM2 fills them only for online processes),
- ``pm2_restarts`` (``restart_time``: restarts and reloads), ``pm2_unstable_restarts`` (exits before
  ``min_uptime``; at ``max_restarts`` PM2 gives up and marks the app errored), ``pm2_uptime_s`` (from ``pm_uptime``).

Only the app names fleetdeck started for the service (``<service>-<n>``) are read; PM2's `pm2_env` also holds
the app's environment (secrets included), which is never stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from collectors.base import LATENCY, UP, MetricRegistry, MetricSpec
from core.config import FleetConfig
from core.samples import Sample

SOURCE = "pm2"
REGISTRY = MetricRegistry(SOURCE, [UP, LATENCY])
INSTANCE_METRICS = (
    MetricSpec("pm2_status", "count", "0 online, 1 launching/stopping/waiting restart, 2 stopped/errored"),
    MetricSpec("pm2_cpu_percent", "percent", "PM2 monit cpu"),
    MetricSpec("pm2_memory_bytes", "bytes", "PM2 monit memory"),
    MetricSpec("pm2_restarts", "count", "PM2 restart_time"),
    MetricSpec("pm2_unstable_restarts", "count", "PM2 unstable_restarts"),
    MetricSpec("pm2_uptime_s", "s", "now - PM2 pm_uptime"),
)
# The instance samples' units, declared for the metric catalogue (collectors/catalogue.py).
INSTANCE_REGISTRY = MetricRegistry("instance", INSTANCE_METRICS)
STATUS_CODES = {"online": 0, "launching": 1, "stopping": 1, "waiting restart": 1, "one-launch-status": 1,
                "stopped": 2, "errored": 2}  # fmt: skip


class Pm2Target(NamedTuple):
    key: str  # "pm2:<service>"
    service: str


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def samples_from_jlist(service: str, entries: list[dict[str, Any]], ts: float) -> list[Sample]:
    """Source `instance` samples for the service's apps in one `pm2 jlist` answer."""
    out: list[Sample] = []
    units = {spec.name: spec.unit for spec in INSTANCE_METRICS}
    for entry in entries:
        name = str(entry.get("name", ""))[:100]
        stem, _, number = name.rpartition("-")
        if stem != service or not number.isdigit():
            continue
        raw_env, raw_monit = entry.get("pm2_env"), entry.get("monit")
        env: dict[str, Any] = raw_env if isinstance(raw_env, dict) else {}
        monit: dict[str, Any] = raw_monit if isinstance(raw_monit, dict) else {}
        status = str(env.get("status", "unknown"))[:40]
        target = f"{service}/{name}"
        started_ms = _number(env.get("pm_uptime"))
        values: dict[str, float | None] = {
            "pm2_status": float(STATUS_CODES.get(status, 2)),
            "pm2_cpu_percent": _number(monit.get("cpu")),
            "pm2_memory_bytes": _number(monit.get("memory")),
            "pm2_restarts": _number(env.get("restart_time")),
            "pm2_unstable_restarts": _number(env.get("unstable_restarts")),
            "pm2_uptime_s": max(0.0, ts - started_ms / 1000.0) if started_ms and status == "online" else None,
        }
        for metric, value in values.items():
            if value is not None:
                out.append(Sample("instance", target, metric, value, ts, units[metric],
                                  text=status if metric == "pm2_status" else None))
    return out


class Pm2Collector:
    name = "pm2"
    source = SOURCE
    registry = REGISTRY

    def __init__(self, config: FleetConfig, store: Any = None) -> None:
        self.config = config
        self.store = store

    def targets(self) -> list[Pm2Target]:
        return [Pm2Target(f"pm2:{s.name}", s.name) for s in self.config.services if s.backend == "pm2"]

    async def collect(self, target: Pm2Target) -> list[Sample]:
        from actions.backends.pm2 import Pm2Orchestrator  # the pm2 CLI wrapper lives with the backend

        ts = time.time()
        started = time.perf_counter()
        orchestrator = Pm2Orchestrator(self.config, self.store)
        entries = await asyncio.to_thread(orchestrator.jlist)  # the pm2 CLI blocks: off the event loop
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [REGISTRY.sample(target.key, "up", 1, ts), REGISTRY.sample(target.key, "latency_ms", latency_ms, ts),
                *samples_from_jlist(target.service, entries, ts)]

    async def aclose(self) -> None:
        return None
