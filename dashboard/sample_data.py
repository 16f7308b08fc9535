"""A believable fleet history written straight into a Store: for tests, the benchmark and screenshots.

The last sample of every series has an exact, documented value (FINAL_* below) so tests can assert the numbers
the dashboard shows; earlier samples wobble around it. Names follow docs/architecture.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from core.samples import Sample, labels_of
from core.store import Store

LB = "nginx:web"
REDIS = "redis:main"
POSTGRES = "postgres:main"
QUEUES = ("main/bull:emails", "main/bull:reports")
VERSION = "1.4.2"
UNREACHABLE_ERROR = "connection refused (127.0.0.1:6379)"
DOWN_ERROR = "GET /health: connection refused"

FINAL_NGINX = {"requests_per_s": 42.5, "active": 12, "accepts": 1000, "handled": 1000, "requests_total": 50000,
               "reading": 0, "writing": 3, "waiting": 9}
FINAL_QUEUE = {
    "main/bull:emails": {"waiting": 7, "active": 2, "delayed": 1, "prioritized": 0, "waiting_children": 0,
                         "completed": 100, "failed": 3, "paused": 0, "oldest_waiting_age_s": 12,
                         "completed_per_s": 1.5, "failed_per_s": 0.05, "workers": 2},
    "main/bull:reports": {"waiting": 4, "active": 0, "delayed": 0, "prioritized": 0, "waiting_children": 0,
                          "completed": 20, "failed": 1, "paused": 0, "oldest_waiting_age_s": 300,
                          "completed_per_s": 0.0, "failed_per_s": 0.1, "workers": 0},
}
# (state, application) → connections; total 14
FINAL_CONNECTIONS = {("active", "web-1"): 2, ("idle", "web-1"): 5, ("idle", "web-2"): 6,
                     ("idle in transaction", "web-3"): 1}
FINAL_POSTGRES = {"connections_total": 14, "max_connections": 100, "connection_budget": 60, "headroom": 83,
                  "headroom_ratio": 0.83, "longest_xact_s": 2.5, "idle_in_xact_max_s": 0.5, "lock_waiters": 1,
                  "deadlocks": 0, "temp_bytes": 0, "cache_hit_ratio": 0.995}
FINAL_PGBOUNCER = {"cl_active": 8, "cl_waiting": 0, "sv_active": 3, "sv_idle": 2, "maxwait_s": 0}
FINAL_REDIS = {"connected_clients": 12, "blocked_clients": 2, "used_memory_bytes": 50 * 2**20,
               "used_memory_rss_bytes": 60 * 2**20, "used_memory_peak_bytes": 70 * 2**20,
               "maxmemory_bytes": 100 * 2**20, "ops_per_s": 340, "rejected_connections": 0}


LEAN_INSTANCE_METRICS = ("latency_ms", "memory_rss_bytes", "cpu_percent")


def instance_final(index: int) -> dict[str, float]:
    """The last values of instance web-<index> (1-based)."""
    return {"latency_ms": 10 + index, "http_status": 200, "health_status": 0, "memory_rss_bytes": (100 + index) * 1e6,
            "cpu_percent": 5.0 * index, "event_loop_lag_s": 0.001 * index, "in_flight": index, "pool_total": 10,
            "pool_idle": 10 - index, "pool_waiting": 0}


@dataclass
class FleetShape:
    instances: int = 3
    span_s: float = 900
    step_s: float = 10
    down: Sequence[int] = ()  # instance indexes whose last `down_samples` health checks failed
    down_samples: int = 3
    unreachable: Sequence[str] = ()  # sources whose last collection failed: "redis", "postgres", "nginx", "bullmq"
    spike: tuple[float, float] | None = None  # (ts, value): one latency_ms sample of web-1 far above the rest
    events: bool = True
    queues: Sequence[str] = field(default_factory=lambda: list(QUEUES))
    # "full": every instance metric; "lean": what the Overview and the table's main columns read (the benchmark's
    # day of 20 instances stays a few million rows instead of ten)
    instance_metrics: str = "full"


def _wobble(final: float, ts: float, now: float, period: float = 600.0) -> float:
    """±10 % around the final value, landing exactly on it at `now`."""
    if ts >= now:
        return float(final)
    return float(final) * (1 + 0.1 * math.sin(2 * math.pi * (now - ts) / period))


def generate(shape: FleetShape, now: float) -> Iterator[list[Sample]]:
    """One batch of samples per scrape time, oldest first, ending exactly at `now`."""
    steps = int(shape.span_s // shape.step_s)
    started = now - shape.span_s - 60
    for k in range(steps, -1, -1):
        ts = now - k * shape.step_s
        elapsed = ts - started
        batch: list[Sample] = []
        for index in range(1, shape.instances + 1):
            target = f"web/web-{index}"
            if index in shape.down and k < shape.down_samples:
                batch.append(Sample("instance", target, "up", 0, ts, "bool", text=DOWN_ERROR))
                batch.append(Sample("instance", target, "latency_ms", 2000, ts, "ms"))
                continue
            final = instance_final(index)
            if shape.instance_metrics == "lean":
                final = {m: v for m, v in final.items() if m in LEAN_INSTANCE_METRICS}
            batch.append(Sample("instance", target, "up", 1, ts, "bool"))
            for metric, value in final.items():
                unit = {"latency_ms": "ms", "memory_rss_bytes": "bytes", "cpu_percent": "percent",
                        "event_loop_lag_s": "s"}.get(metric, "count")
                wobbling = metric in ("latency_ms", "memory_rss_bytes", "cpu_percent", "event_loop_lag_s")
                batch.append(Sample("instance", target, metric, _wobble(value, ts, now) if wobbling else value, ts,
                                    unit, text="pass" if metric == "health_status" else None))
            if shape.spike and index == 1 and abs(ts - shape.spike[0]) < shape.step_s / 2:
                batch[-len(final)] = Sample("instance", target, "latency_ms", shape.spike[1], ts, "ms")
            if shape.instance_metrics == "lean":
                batch.append(Sample("instance", target, "requests_total", elapsed * 10 * index, ts, "count"))
                continue
            batch += [
                Sample("instance", target, "uptime_s", elapsed, ts, "s"),
                Sample("instance", target, "cpu_seconds_total", elapsed * 0.05 * index, ts, "s"),
                Sample("instance", target, "requests_total", elapsed * 10 * index, ts, "count"),
                Sample("instance", target, "requests_5xx_total", elapsed * 0.1, ts, "count"),
                Sample("instance", target, "version", 1, ts, "", text=VERSION),
                Sample("instance", target, "health_raw", 1, ts, "", text=json.dumps({
                    "status": "pass", "version": VERSION, "serviceId": "web", "instanceId": f"web-{index}",
                    "uptime": elapsed, "inFlight": index, "draining": False,
                    "database": {"pool": {"totalCount": 10, "idleCount": 10 - index, "waitingCount": 0, "max": 10}},
                })),
            ]
        batch += _nginx(shape, ts, now)
        batch += _queues(shape, ts, now)
        batch += _redis(shape, ts, now, elapsed)
        batch += _postgres(shape, ts, now, elapsed)
        batch.append(Sample("alert", "no_workers/main/bull:reports", "firing", 1, ts, "bool",
                            text="4 jobs waiting on main/bull:reports and no worker"))
        yield batch


def _failed(shape: FleetShape, source: str, target: str, ts: float, now: float) -> list[Sample] | None:
    last_scrapes = now - ts < 3 * shape.step_s
    if source in shape.unreachable and last_scrapes:
        return [Sample(source, target, "up", 0, ts, "bool", text=UNREACHABLE_ERROR)]
    return None


def _nginx(shape: FleetShape, ts: float, now: float) -> list[Sample]:
    failed = _failed(shape, "nginx", LB, ts, now)
    if failed:
        return failed
    out = [Sample("nginx", LB, "up", 1, ts, "bool"), Sample("nginx", LB, "latency_ms", 1.5, ts, "ms")]
    out += [Sample("nginx", LB, m, _wobble(v, ts, now) if m == "requests_per_s" else v, ts)
            for m, v in FINAL_NGINX.items()]
    for index in range(1, shape.instances + 1):
        server = f"{LB}/127.0.0.1:{9100 + index}"
        down = index in shape.down and now - ts < shape.down_samples * shape.step_s
        out += [
            Sample("nginx", server, "requests_per_s", 0 if down else 14, ts, "1/s"),
            Sample("nginx", server, "status_4xx_per_s", 0.5, ts, "1/s"),
            Sample("nginx", server, "status_5xx_per_s", 0.25 if index == 1 else 0, ts, "1/s"),
            Sample("nginx", server, "upstream_p50_ms", 8, ts, "ms"),
            Sample("nginx", server, "upstream_p95_ms", _wobble(20 + 5 * index, ts, now), ts, "ms"),
            Sample("nginx", server, "failed_attempts", 0, ts, "count"),
            Sample("nginx", server, "server_state", 2 if down else 0, ts, "", text="down" if down else "up"),
        ]
    return out


def _queues(shape: FleetShape, ts: float, now: float) -> list[Sample]:
    failed = _failed(shape, "bullmq", "main", ts, now)
    if failed:
        return failed
    out = [Sample("bullmq", "main", "up", 1, ts, "bool"), Sample("bullmq", "main", "latency_ms", 0.8, ts, "ms")]
    for queue in shape.queues:
        final = FINAL_QUEUE.get(queue, FINAL_QUEUE[QUEUES[0]])
        out += [Sample("bullmq", queue, m, round(_wobble(v, ts, now)) if m == "waiting" else v, ts, "count")
                for m, v in final.items()]
    return out


def _redis(shape: FleetShape, ts: float, now: float, elapsed: float) -> list[Sample]:
    failed = _failed(shape, "redis", REDIS, ts, now)
    if failed:
        return failed
    out = [Sample("redis", REDIS, "up", 1, ts, "bool"), Sample("redis", REDIS, "latency_ms", 0.5, ts, "ms")]
    out += [Sample("redis", REDIS, m, _wobble(v, ts, now) if m == "ops_per_s" else v, ts)
            for m, v in FINAL_REDIS.items()]
    out += [
        Sample("redis", REDIS, "maxmemory_policy", 0, ts, "", text="allkeys-lru"),
        Sample("redis", REDIS, "evicted_keys", math.floor(elapsed / 60), ts, "count"),
        Sample("redis", REDIS, "keys", 1234, ts, "count", labels_of(db="db0")),
    ]
    return out


def _postgres(shape: FleetShape, ts: float, now: float, elapsed: float) -> list[Sample]:
    failed = _failed(shape, "postgres", POSTGRES, ts, now)
    if failed:
        return failed
    out = [Sample("postgres", POSTGRES, "up", 1, ts, "bool"), Sample("postgres", POSTGRES, "latency_ms", 2, ts, "ms")]
    out += [Sample("postgres", POSTGRES, m, v, ts) for m, v in FINAL_POSTGRES.items()]
    out += [Sample("postgres", POSTGRES, "connections", n, ts, "count", labels_of(state=state, application=app))
            for (state, app), n in FINAL_CONNECTIONS.items()]
    out += [Sample("postgres", POSTGRES, f"pgbouncer_{column}", value, ts, "count",
                   labels_of(database="fleetdeck_demo", user="web"))
            for column, value in FINAL_PGBOUNCER.items()]
    out += [
        Sample("postgres", POSTGRES, "xact_commit", elapsed * 50, ts, "count"),
        Sample("postgres", POSTGRES, "xact_rollback", elapsed * 0.5, ts, "count"),
        Sample("postgres", POSTGRES, "blks_hit", elapsed * 995, ts, "count"),
        Sample("postgres", POSTGRES, "blks_read", elapsed * 5, ts, "count"),
    ]
    return out


def seed(store: Store, shape: FleetShape, now: float, batch_rows: int = 50_000) -> int:
    """Write the fleet's history; returns the number of samples written."""
    pending: list[Sample] = []
    written = 0
    for batch in generate(shape, now):
        pending += batch
        if len(pending) >= batch_rows:
            written += store.write_samples(pending)
            pending = []
    written += store.write_samples(pending)
    if shape.events:
        store.add_event("scale", "web", "scaled web from 2 to 3 replicas", ts=now - shape.span_s / 2)
        store.add_event("drain", "web/web-2", "drained web-2 for deploy", ts=now - shape.span_s / 4)
    return written
