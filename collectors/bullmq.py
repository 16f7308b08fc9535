"""BullMQ queues (v5 and v6 layouts) on every configured Redis: counts, age, throughput and workers.

Per Redis and tick: one pipeline of O(1) commands for all queues (plus ONE ``CLIENT LIST`` for the workers)
and, when queues have waiting jobs, a second pipeline reading the oldest job's ``timestamp``. Never
``getJobCounts`` (a Lua script per queue, ~5x the Redis CPU, and it RPOPs legacy markers) and never ``KEYS``:
queues are discovered with ``SCAN MATCH <prefix>:*:meta`` (and ``*:id`` for legacy Bull) on a slow cadence,
plus the configured queue names. See DESIGN.md §4 for the key layout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from collectors.base import LATENCY, UP, MetricRegistry, MetricSpec, rate
from collectors.redis_common import make_client
from core.config import FleetConfig, RedisConfig
from core.samples import Sample

SOURCE = "bullmq"

REGISTRY = MetricRegistry(
    SOURCE,
    [
        UP,
        LATENCY,
        MetricSpec("waiting", "count", "LLEN wait + LLEN paused (v5 and v6), legacy marker excluded"),
        MetricSpec("active", "count", "LLEN active"),
        MetricSpec("delayed", "count", "ZCARD delayed"),
        MetricSpec("prioritized", "count", "ZCARD prioritized"),
        MetricSpec("waiting_children", "count", "ZCARD waiting-children"),
        MetricSpec("completed", "count", "ZCARD completed (what is kept, not all ever completed)"),
        MetricSpec("failed", "count", "ZCARD failed"),
        MetricSpec("paused", "bool", "HEXISTS meta paused"),
        MetricSpec("oldest_waiting_age_s", "s", "now - timestamp of the oldest waiting job (0 when none)"),
        MetricSpec("completed_per_s", "1/s", "from metrics:completed count, else ZCOUNT completed since last tick"),
        MetricSpec("failed_per_s", "1/s", "from metrics:failed count, else ZCOUNT failed since last tick"),
        MetricSpec("workers", "count", "worker connections from CLIENT LIST (Node and Python names)"),
    ],
)

# The commands queued per queue, in order; the parser below reads them back by this layout.
_PER_QUEUE = 15


class RedisTarget(NamedTuple):
    key: str  # the Sample.target of up/latency_ms: "<name>" for bullmq, "redis:<name>" for redis_info
    name: str  # the Redis name from the config
    url: str
    prefixes: tuple[str, ...]
    queues: tuple[str, ...]  # always watched, besides the discovered ones


class QueueCounts(NamedTuple):
    waiting: int
    active: int
    delayed: int
    prioritized: int
    waiting_children: int
    completed: int
    failed: int
    paused: bool
    oldest_job_id: str | None
    metrics_completed: int | None
    metrics_failed: int | None
    completed_since: int
    failed_since: int


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _is_marker(value: str | None) -> bool:
    # BullMQ v5 pushed "0:<delay>" markers into wait; getJobCounts does not count them, neither do we
    return value is not None and value.startswith("0:")


def targets_from_config(config: FleetConfig, key_prefix: str = "") -> list[RedisTarget]:
    return [_target(redis_config, key_prefix) for redis_config in config.redis]


def _target(cfg: RedisConfig, key_prefix: str) -> RedisTarget:
    return RedisTarget(key_prefix + cfg.name, cfg.name, cfg.url, tuple(cfg.queue_prefixes), tuple(cfg.queues))


def node_client_name(prefix: str, queue: str) -> str:
    """What a Node BullMQ worker sets with CLIENT SETNAME (before the optional ``:w:<name>``)."""
    return f"{prefix}:{base64.b64encode(queue.encode()).decode()}"


def count_workers(client_list: str, queues: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Workers per (prefix, queue) from one CLIENT LIST.

    Node names ``<prefix>:<base64(queue)>[:w:<name>]`` on one connection per worker: each connection counts.
    Python bullmq (3.4.4: ``RedisBackend.setName`` names the pool *and* the blocking connection)
    uses ``<prefix>:<queue>[:w:<name>]`` on two or more connections per worker: deduplicated by (host, name).
    """
    by_python_name: dict[str, tuple[str, str]] = {}
    by_node_name: dict[str, tuple[str, str]] = {}
    for prefix, queue in queues:
        by_python_name[f"{prefix}:{queue}"] = (prefix, queue)
        by_node_name[node_client_name(prefix, queue)] = (prefix, queue)
    counts: dict[tuple[str, str], int] = {pq: 0 for pq in by_python_name.values()}
    python_seen: set[tuple[str, str]] = set()
    for line in client_list.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        name = fields.get("name", "")
        if not name:
            continue
        base = name.split(":w:", 1)[0]
        host = fields.get("addr", "").rsplit(":", 1)[0]
        if base in by_python_name:
            identity = (host, name)
            if identity in python_seen:
                continue
            python_seen.add(identity)
            counts[by_python_name[base]] += 1
        elif base in by_node_name:
            counts[by_node_name[base]] += 1
    return counts


class BullMQCollector:
    name = "bullmq"
    source = SOURCE
    registry = REGISTRY

    def __init__(
        self,
        config: FleetConfig | None = None,
        fixed_targets: list[RedisTarget] | None = None,
        discovery_interval_s: float | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self.fixed_targets = fixed_targets
        self.discovery_interval_s = (
            discovery_interval_s
            if discovery_interval_s is not None
            else (config.collectors.queue_discovery_s if config else 60.0)
        )
        self.timeout_s = timeout_s if timeout_s is not None else (config.collectors.timeout_s if config else 4.0)
        self._clients: dict[str, tuple[Any, aioredis.Redis]] = {}
        self._discovered: dict[str, tuple[float, list[tuple[str, str]]]] = {}
        self._previous: dict[tuple[str, str], tuple[float, float]] = {}  # (queue target, metric) -> (value, ts)
        self._last_tick_ms: dict[str, int] = {}

    def targets(self) -> list[RedisTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        return targets_from_config(self.config) if self.config else []

    def _client(self, target: RedisTarget) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        cached = self._clients.get(target.key)
        if cached is None or cached[0] is not loop:
            cached = (loop, make_client(target.url, self.timeout_s))
            self._clients[target.key] = cached
        return cached[1]

    async def discover(self, client: aioredis.Redis, target: RedisTarget) -> list[tuple[str, str]]:
        """(prefix, queue) pairs: configured queues plus SCAN results; names may contain ':'."""
        found: set[tuple[str, str]] = {(prefix, queue) for prefix in target.prefixes[:1] for queue in target.queues}
        for prefix in target.prefixes:
            for suffix in (":meta", ":id"):
                async for key in client.scan_iter(match=f"{prefix}:*{suffix}", count=1000):
                    queue = key[len(prefix) + 1 : -len(suffix)]
                    if queue and not queue.endswith(":metrics"):
                        found.add((prefix, queue))
        return sorted(found)

    async def _queues(self, client: aioredis.Redis, target: RedisTarget, now: float) -> list[tuple[str, str]]:
        cached = self._discovered.get(target.key)
        if cached is None or now - cached[0] >= self.discovery_interval_s:
            cached = (now, await self.discover(client, target))
            self._discovered[target.key] = cached
        return cached[1]

    async def collect(self, target: RedisTarget) -> list[Sample]:
        client = self._client(target)
        ts = time.time()
        started = time.perf_counter()
        queues = await self._queues(client, target, ts)
        first_tick = target.key not in self._last_tick_ms
        since_ms = self._last_tick_ms.get(target.key, int(ts * 1000))
        pipe = client.pipeline(transaction=False)
        for prefix, queue in queues:
            base = f"{prefix}:{queue}:"
            pipe.llen(base + "wait")
            pipe.llen(base + "paused")
            pipe.llen(base + "active")
            pipe.zcard(base + "delayed")
            pipe.zcard(base + "prioritized")
            pipe.zcard(base + "waiting-children")
            pipe.zcard(base + "completed")
            pipe.zcard(base + "failed")
            pipe.hexists(base + "meta", "paused")
            pipe.lindex(base + "wait", -1)
            pipe.lindex(base + "paused", -1)
            pipe.hget(base + "metrics:completed", "count")
            pipe.hget(base + "metrics:failed", "count")
            pipe.zcount(base + "completed", f"({since_ms}", "+inf")
            pipe.zcount(base + "failed", f"({since_ms}", "+inf")
        pipe.execute_command("CLIENT", "LIST")
        replies = await pipe.execute()
        client_list = replies[-1]
        if isinstance(client_list, bytes):
            client_list = client_list.decode()
        counts: dict[tuple[str, str], QueueCounts] = {}
        for index, pq in enumerate(queues):
            r = replies[index * _PER_QUEUE : (index + 1) * _PER_QUEUE]
            wait_len, paused_len = _int(r[0]), _int(r[1])
            # legacy v5 marker at the tail of wait/paused: getJobCounts subtracts it, so do we
            wait_len -= 1 if wait_len > 0 and _is_marker(r[9]) else 0
            paused_len -= 1 if paused_len > 0 and _is_marker(r[10]) else 0
            oldest = r[9] if r[9] is not None and not _is_marker(r[9]) else None
            if oldest is None and r[10] is not None and not _is_marker(r[10]):
                oldest = r[10]
            counts[pq] = QueueCounts(
                wait_len + paused_len,
                _int(r[2]),
                _int(r[3]),
                _int(r[4]),
                _int(r[5]),
                _int(r[6]),
                _int(r[7]),
                bool(r[8]),
                oldest,
                int(r[11]) if r[11] is not None else None,
                int(r[12]) if r[12] is not None else None,
                _int(r[13]),
                _int(r[14]),
            )
        oldest_ts: dict[tuple[str, str], float] = {}
        with_oldest = [(pq, c.oldest_job_id) for pq, c in counts.items() if c.oldest_job_id]
        if with_oldest:
            second = client.pipeline(transaction=False)
            for (prefix, queue), job_id in with_oldest:
                second.hget(f"{prefix}:{queue}:{job_id}", "timestamp")
            for (pq, _job_id), stamp in zip(with_oldest, await second.execute(), strict=True):
                if stamp is not None:
                    oldest_ts[pq] = float(stamp) / 1000.0
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._last_tick_ms[target.key] = int(ts * 1000)
        workers = count_workers(client_list, queues)
        out = [
            REGISTRY.sample(target.key, "up", 1, ts),
            REGISTRY.sample(target.key, "latency_ms", latency_ms, ts),
        ]
        for pq, c in counts.items():
            out.extend(
                self._queue_samples(target.name, pq, c, workers.get(pq, 0), oldest_ts.get(pq), ts, since_ms, first_tick)
            )
        return out

    def _queue_samples(
        self,
        redis_name: str,
        pq: tuple[str, str],
        c: QueueCounts,
        workers: int,
        oldest_ts: float | None,
        ts: float,
        since_ms: int,
        first_tick: bool,
    ) -> list[Sample]:
        key = f"{redis_name}/{pq[0]}:{pq[1]}"
        sample = REGISTRY.sample
        out = [
            sample(key, "waiting", c.waiting, ts),
            sample(key, "active", c.active, ts),
            sample(key, "delayed", c.delayed, ts),
            sample(key, "prioritized", c.prioritized, ts),
            sample(key, "waiting_children", c.waiting_children, ts),
            sample(key, "completed", c.completed, ts),
            sample(key, "failed", c.failed, ts),
            sample(key, "paused", 1 if c.paused else 0, ts),
            sample(key, "oldest_waiting_age_s", max(0.0, ts - oldest_ts) if oldest_ts and c.waiting else 0.0, ts),
            sample(key, "workers", workers, ts),
        ]
        window_s = ts - since_ms / 1000.0
        for metric, counter, since in (
            ("completed_per_s", c.metrics_completed, c.completed_since),
            ("failed_per_s", c.metrics_failed, c.failed_since),
        ):
            per_s: float | None
            if counter is not None:  # monotonic count kept by workers with metrics.maxDataPoints
                state = (key, metric)
                per_s = rate(self._previous.get(state), counter, ts)
                self._previous[state] = (counter, ts)
            else:  # lower bound when jobs are removed on completion; needs a previous tick to bound the window
                per_s = since / window_s if window_s > 0 and not first_tick else None
            if per_s is not None:
                out.append(sample(key, metric, per_s, ts))
        return out

    async def aclose(self) -> None:
        for _loop, client in self._clients.values():
            with contextlib.suppress(Exception):  # closing a dead connection must not mask anything
                await client.aclose()
        self._clients.clear()
