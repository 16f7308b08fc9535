"""BullMQ queues (v5 and v6 layouts) on every configured Redis: counts, age, throughput and workers.

Per Redis and tick: one pipeline of O(1) commands for all queues (plus ONE ``CLIENT LIST`` for the workers)
and, when queues have waiting jobs, a second pipeline reading the oldest job's ``timestamp`` (a third and fourth
only for queues whose taken end holds LIFO jobs, see ``_oldest_timestamps``). The pipelines go
over a bare RESP connection (collectors/redis_common.py ``RespConnection``): the per-queue commands are packed once
per discovery and the replies parsed by a small RESP parser, because redis-py's per-command packing and parsing
cost several times what Redis spends on these O(1) commands (bench/bench_collectors.py). Never
``getJobCounts`` (a Lua script per queue, ~5x the Redis CPU, and it RPOPs legacy markers) and never ``KEYS``:
queues are discovered with ``SCAN MATCH <prefix>:*:meta`` (and ``*:id`` for legacy Bull) on a slow cadence,
plus the configured queue names. See docs/design-notes.md#redis-and-bullmq for the key layout.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec, rate
from collectors.clients import CollectorClients
from collectors.redis_common import RespConnection, RespError, pack
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
        MetricSpec("oldest_waiting_age_s", "s", "now - timestamp of the oldest waiting job, past LIFO jobs (0: none)"),
        MetricSpec("completed_per_s", "1/s", "from metrics:completed count, else ZCOUNT completed since last tick"),
        MetricSpec("failed_per_s", "1/s", "from metrics:failed count, else ZCOUNT failed since last tick"),
        MetricSpec("workers", "count", "worker connections from CLIENT LIST (Node and Python names)"),
    ],
)

# The commands packed per queue once per discovery, in this order (collect() reads the replies by it):
# LLEN wait, LLEN paused, LLEN active, ZCARD delayed, prioritized, waiting-children, completed, failed,
# HEXISTS meta paused, LINDEX wait -1, LINDEX paused -1, HGET metrics:completed count, HGET metrics:failed count.
# Then, per kind and only when the rate needs it (a previous tick to bound the window and no metrics:<kind> count
# seen last tick), ZCOUNT completed|failed (<since> +inf: its argument changes every tick, so it is spliced in.
_STATIC_PER_QUEUE = 13
_PLUS_INF = pack("+inf")[len(b"*1\r\n") :]  # the bulk string alone
_ZCOUNT_HEAD = b"*4\r\n$6\r\nZCOUNT\r\n"


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Plan(NamedTuple):
    """The packed per-queue commands of one discovery."""

    queues: list[tuple[str, str]]
    static: list[bytes]  # _STATIC_PER_QUEUE commands per queue
    zcount: list[tuple[bytes, bytes]]  # per queue: ZCOUNT head + key for completed, for failed


def _plan(queues: list[tuple[str, str]]) -> _Plan:
    static: list[bytes] = []
    zcount: list[tuple[bytes, bytes]] = []
    for prefix, queue in queues:
        base = f"{prefix}:{queue}:"
        static.append(
            b"".join(
                (
                    pack("LLEN", base + "wait"),
                    pack("LLEN", base + "paused"),
                    pack("LLEN", base + "active"),
                    pack("ZCARD", base + "delayed"),
                    pack("ZCARD", base + "prioritized"),
                    pack("ZCARD", base + "waiting-children"),
                    pack("ZCARD", base + "completed"),
                    pack("ZCARD", base + "failed"),
                    pack("HEXISTS", base + "meta", "paused"),
                    pack("LINDEX", base + "wait", -1),
                    pack("LINDEX", base + "paused", -1),
                    pack("HGET", base + "metrics:completed", "count"),
                    pack("HGET", base + "metrics:failed", "count"),
                )
            )
        )
        zcount.append((_ZCOUNT_HEAD + _bulk(base + "completed"), _ZCOUNT_HEAD + _bulk(base + "failed")))
    return _Plan(queues, static, zcount)


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
    completed_since: int | None  # ZCOUNT since the last tick; None when not asked (first tick, metrics count seen)
    failed_since: int | None
    oldest_list: str = "wait"  # the list oldest_job_id was read from: wait, or paused (BullMQ v5)


# How many jobs at the taken end of a list are read when LIFO jobs sit there (see _oldest_timestamps).
LIFO_SCAN = 256


async def _oldest_timestamps(client: RespConnection, counts: dict[tuple[str, str], QueueCounts]) -> dict[
        tuple[str, str], float]:
    """The timestamp of the oldest waiting job per queue, in seconds.

    BullMQ LPUSHes a job onto `wait` and takes jobs from the right end, so the job there is the oldest — unless
    LIFO jobs were added (RPUSH: they stack on the right end, newest outermost) and hide it. The right end's job
    is read with its `opts`: when it is a LIFO job, the rightmost LIFO_SCAN jobs are read as well (the oldest
    FIFO job is just left of the LIFO block) and the smallest timestamp wins. With more LIFO jobs stacked than
    that, the age is a lower bound (docs/architecture.md, "BullMQ oldest waiting age").
    """
    with_tail = [(pq, c.oldest_job_id) for pq, c in counts.items() if c.oldest_job_id]
    if not with_tail:
        return {}
    payload = b"".join(pack("HMGET", f"{p}:{q}:{job_id}", "timestamp", "opts") for (p, q), job_id in with_tail)
    replies = await client.pipeline(payload, len(with_tail))
    _raise_errors(replies)
    oldest: dict[tuple[str, str], float] = {}
    lifo: list[tuple[str, str]] = []
    for (pq, _job_id), (stamp, opts) in zip(with_tail, replies, strict=True):
        if stamp is not None:
            oldest[pq] = float(stamp) / 1000.0
        if opts is not None and b'"lifo":true' in opts:
            lifo.append(pq)
    if not lifo:
        return oldest
    lists = [f"{p}:{q}:{counts[(p, q)].oldest_list}" for p, q in lifo]
    payload = b"".join(pack("LRANGE", key, -LIFO_SCAN, -1) for key in lists)
    ranges = await client.pipeline(payload, len(lists))
    _raise_errors(ranges)
    wanted = [(pq, job_id.decode("utf-8", "replace")) for pq, ids in zip(lifo, ranges, strict=True)
              for job_id in (ids or []) if not _is_marker(job_id)]
    if not wanted:
        return oldest
    payload = b"".join(pack("HGET", f"{p}:{q}:{job_id}", "timestamp") for (p, q), job_id in wanted)
    stamps = await client.pipeline(payload, len(wanted))
    _raise_errors(stamps)
    for (pq, _job_id), stamp in zip(wanted, stamps, strict=True):
        if stamp is not None:
            oldest[pq] = min(oldest.get(pq, float("inf")), float(stamp) / 1000.0)
    return oldest


def _is_marker(value: bytes | None) -> bool:
    # BullMQ v5 pushed "0:<delay>" markers into wait; getJobCounts does not count them, neither do we
    return value is not None and value.startswith(b"0:")


def _raise_errors(replies: list[Any]) -> None:
    # like redis-py's pipeline (raise_on_error): an error reply (e.g. WRONGTYPE) fails the tick with its text
    for reply in replies:
        if reply.__class__ is RespError:
            raise reply


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


_CLIENT_LIST = pack("CLIENT", "LIST")
# (metric, unit) of the per-queue gauges, in the order _queue_samples emits them
_GAUGES = tuple(
    (name, REGISTRY.unit(name))
    for name in ("waiting", "active", "delayed", "prioritized", "waiting_children", "completed", "failed",
                 "paused", "oldest_waiting_age_s", "workers")
)  # fmt: skip


class BullMQCollector(CollectorBase[RedisTarget]):
    name = "bullmq"
    source = SOURCE
    registry = REGISTRY

    def __init__(
        self,
        config: FleetConfig | None = None,
        fixed_targets: list[RedisTarget] | None = None,
        discovery_interval_s: float | None = None,
        timeout_s: float | None = None,
        clients: CollectorClients | None = None,
    ) -> None:
        super().__init__(config, clients, fixed_targets)
        self.discovery_interval_s = (
            discovery_interval_s
            if discovery_interval_s is not None
            else (config.collectors.queue_discovery_s if config else 60.0)
        )
        self.timeout_s = timeout_s if timeout_s is not None else (config.collectors.timeout_s if config else 4.0)
        self._discovered: dict[str, tuple[float, _Plan]] = {}
        self._previous: dict[tuple[str, str], tuple[float, float]] = {}  # (queue target, metric) -> (value, ts)
        self._last_tick_ms: dict[str, int] = {}
        # (redis target, prefix, queue) -> whether metrics:completed / metrics:failed had a count last tick
        self._metrics_seen: dict[tuple[str, str, str], tuple[bool, bool]] = {}

    def targets(self) -> list[RedisTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        return targets_from_config(self.config) if self.config else []

    def _client(self, target: RedisTarget) -> RespConnection:
        return self.clients.resp(target.key, target.url, self.timeout_s)

    async def discover(self, client: RespConnection, target: RedisTarget) -> list[tuple[str, str]]:
        """(prefix, queue) pairs: configured queues plus SCAN results; names may contain ':'."""
        found: set[tuple[str, str]] = {(prefix, queue) for prefix in target.prefixes[:1] for queue in target.queues}
        for prefix in target.prefixes:
            for suffix in (":meta", ":id"):
                for key in await client.scan(f"{prefix}:*{suffix}", count=1000):
                    queue = key[len(prefix) + 1 : -len(suffix)]
                    if queue and not queue.endswith(":metrics"):
                        found.add((prefix, queue))
        return sorted(found)

    async def _queues(self, client: RespConnection, target: RedisTarget, now: float) -> _Plan:
        cached = self._discovered.get(target.key)
        if cached is None or now - cached[0] >= self.discovery_interval_s:
            cached = (now, _plan(await self.discover(client, target)))
            self._discovered[target.key] = cached
        return cached[1]

    async def collect(self, target: RedisTarget) -> list[Sample]:
        client = self._client(target)
        ts = time.time()
        started = time.perf_counter()
        plan = await self._queues(client, target, ts)
        queues = plan.queues
        first_tick = target.key not in self._last_tick_ms
        since_ms = self._last_tick_ms.get(target.key, int(ts * 1000))
        since = _bulk(f"({since_ms}") + _PLUS_INF
        seen = self._metrics_seen
        parts: list[bytes] = []
        wants: list[tuple[bool, bool]] = []
        for index, (prefix, queue) in enumerate(queues):
            parts.append(plan.static[index])
            had_completed, had_failed = seen.get((target.key, prefix, queue), (False, False))
            want = (not first_tick and not had_completed, not first_tick and not had_failed)
            wants.append(want)
            if want[0]:
                parts.append(plan.zcount[index][0] + since)
            if want[1]:
                parts.append(plan.zcount[index][1] + since)
        parts.append(_CLIENT_LIST)
        count = len(queues) * _STATIC_PER_QUEUE + sum(a + b for a, b in wants) + 1
        replies = await client.pipeline(b"".join(parts), count)
        _raise_errors(replies)
        client_list = replies[-1].decode("utf-8", "replace")
        counts: dict[tuple[str, str], QueueCounts] = {}
        at = 0
        for pq, (want_completed, want_failed) in zip(queues, wants, strict=True):
            r = replies[at : at + _STATIC_PER_QUEUE]
            at += _STATIC_PER_QUEUE
            completed_since: int | None = None
            failed_since: int | None = None
            if want_completed:
                completed_since = replies[at]
                at += 1
            if want_failed:
                failed_since = replies[at]
                at += 1
            wait_len, paused_len, wait_tail, paused_tail = r[0], r[1], r[9], r[10]
            # legacy v5 marker at the tail of wait/paused: getJobCounts subtracts it, so do we
            if wait_len > 0 and _is_marker(wait_tail):
                wait_len -= 1
                wait_tail = None
            if paused_len > 0 and _is_marker(paused_tail):
                paused_len -= 1
                paused_tail = None
            oldest = wait_tail if wait_tail is not None else paused_tail
            metrics_completed = int(r[11]) if r[11] is not None else None
            metrics_failed = int(r[12]) if r[12] is not None else None
            seen[(target.key, pq[0], pq[1])] = (metrics_completed is not None, metrics_failed is not None)
            counts[pq] = QueueCounts(
                wait_len + paused_len,
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                bool(r[8]),
                oldest.decode("utf-8", "replace") if oldest is not None else None,
                metrics_completed,
                metrics_failed,
                completed_since,
                failed_since,
                "wait" if wait_tail is not None else "paused",
            )
        oldest_ts = await _oldest_timestamps(client, counts)
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
        age = max(0.0, ts - oldest_ts) if oldest_ts and c.waiting else 0.0
        # Sample(...) straight from the declared units: ~2,400 samples per tick for 200 queues, where the
        # registry's per-call lookup showed in the profile. _GAUGES is built from REGISTRY, so names stay declared.
        values = (c.waiting, c.active, c.delayed, c.prioritized, c.waiting_children, c.completed, c.failed,
                  1 if c.paused else 0, age, workers)  # fmt: skip
        out = [
            Sample(SOURCE, key, metric, float(value), ts, unit)
            for (metric, unit), value in zip(_GAUGES, values, strict=True)
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
                # and a ZCOUNT, which is not asked on the tick right after a metrics count disappeared (None)
                per_s = since / window_s if since is not None and window_s > 0 and not first_tick else None
            if per_s is not None:
                out.append(sample(key, metric, per_s, ts))
        return out
