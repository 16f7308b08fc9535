"""Redis server health from one ``INFO`` call: memory, clients, eviction policy, throughput.

Which fields and why: docs/design-notes.md#redis-and-bullmq.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec, rate
from collectors.bullmq import RedisTarget, targets_from_config
from collectors.clients import CollectorClients
from core.config import FleetConfig
from core.samples import Sample, labels_of

SOURCE = "redis"

REGISTRY = MetricRegistry(
    SOURCE,
    [
        UP,
        LATENCY,
        MetricSpec("connected_clients", "count", "INFO connected_clients"),
        MetricSpec("blocked_clients", "count", "INFO blocked_clients (BullMQ workers waiting in BZPOPMIN)"),
        MetricSpec("used_memory_bytes", "bytes", "INFO used_memory"),
        MetricSpec("used_memory_rss_bytes", "bytes", "INFO used_memory_rss"),
        MetricSpec("used_memory_peak_bytes", "bytes", "INFO used_memory_peak"),
        MetricSpec("maxmemory_bytes", "bytes", "INFO maxmemory (0 = no limit)"),
        MetricSpec("maxmemory_policy", "bool", "1 when noeviction (what BullMQ needs), else 0; text = policy"),
        MetricSpec("ops_per_s", "1/s", "rate of total_commands_processed between ticks"),
        MetricSpec("evicted_keys", "count", "INFO evicted_keys (monotonic)"),
        MetricSpec("rejected_connections", "count", "INFO rejected_connections (monotonic)"),
        MetricSpec("keys", "count", "keys per database (labels db)"),
    ],
)

_PLAIN = (
    ("connected_clients", "connected_clients"),
    ("blocked_clients", "blocked_clients"),
    ("used_memory", "used_memory_bytes"),
    ("used_memory_rss", "used_memory_rss_bytes"),
    ("used_memory_peak", "used_memory_peak_bytes"),
    ("maxmemory", "maxmemory_bytes"),
    ("evicted_keys", "evicted_keys"),
    ("rejected_connections", "rejected_connections"),
)


def info_samples(key: str, info: dict[str, Any], ts: float, previous_ops: tuple[float, float] | None) -> list[Sample]:
    """Samples from a parsed INFO dict (redis-py's parse: numbers typed, `db0` a dict); no up/latency."""
    out: list[Sample] = []
    for field, metric in _PLAIN:
        if field in info:
            out.append(REGISTRY.sample(key, metric, float(info[field]), ts))
    policy = str(info.get("maxmemory_policy", ""))
    if policy:
        out.append(REGISTRY.sample(key, "maxmemory_policy", 1 if policy == "noeviction" else 0, ts, text=policy))
    if "total_commands_processed" in info:
        per_s = rate(previous_ops, float(info["total_commands_processed"]), ts)
        if per_s is not None:
            out.append(REGISTRY.sample(key, "ops_per_s", per_s, ts))
    for field, value in info.items():
        if field.startswith("db") and field[2:].isdigit() and isinstance(value, dict) and "keys" in value:
            out.append(REGISTRY.sample(key, "keys", float(value["keys"]), ts, labels=labels_of(db=field[2:])))
    return out


class RedisInfoCollector(CollectorBase[RedisTarget]):
    name = "redis"
    source = SOURCE
    registry = REGISTRY

    def __init__(
        self,
        config: FleetConfig | None = None,
        fixed_targets: list[RedisTarget] | None = None,
        timeout_s: float | None = None,
        clients: CollectorClients | None = None,
    ) -> None:
        super().__init__(config, clients, fixed_targets)
        self.timeout_s = timeout_s if timeout_s is not None else (config.collectors.timeout_s if config else 4.0)
        self._previous_ops: dict[str, tuple[float, float]] = {}

    def targets(self) -> list[RedisTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        return targets_from_config(self.config, key_prefix="redis:") if self.config else []

    def _client(self, target: RedisTarget) -> aioredis.Redis:
        return self.clients.redis(target.key, target.url, self.timeout_s)

    async def collect(self, target: RedisTarget) -> list[Sample]:
        key = target.key  # "redis:<name>"
        ts = time.time()
        started = time.perf_counter()
        info = await self._client(target).info("all")
        latency_ms = (time.perf_counter() - started) * 1000.0
        out = [REGISTRY.sample(key, "up", 1, ts), REGISTRY.sample(key, "latency_ms", latency_ms, ts)]
        out.extend(info_samples(key, info, ts, self._previous_ops.get(target.key)))
        if "total_commands_processed" in info:
            self._previous_ops[target.key] = (float(info["total_commands_processed"]), ts)
        return out
