"""Collector benchmarks (prints figures; not a test).

1. 1,000 health targets on loopback: one server process listening on 1,000 ports with Express-like JSON bodies.
   One full InstanceCollector cycle (through the runner firewall): wall time and collector CPU per target poll
   (goals: <= 1 s and <= 150 us). Floor, same run: a minimal asyncio-streams HTTP/1.1 keep-alive GET loop that
   reads each body and parses nothing. Prints the ratio.
2. 200 BullMQ queues on one Redis: BullMQCollector tick (goal <= 30 ms) vs a raw LLEN/ZCARD pipeline over the same
   queues through redis-py (goal <= 1.2x). For information, the same 8 commands per queue sent prepared over the
   collector's own bare RESP connection: what the collector's extra commands, parsing and samples cost on top.

Run: PYTHONPATH=. .venv/bin/python bench/bench_collectors.py [--targets 1000] [--queues 200] [--cycles 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from loopback_targets import METRICS_PAGE, measure_prometheus, peak_rss_mb, rss_mb, start_targets, stored_prometheus

from collectors.bullmq import BullMQCollector, RedisTarget
from collectors.instance_readings import parse_prometheus
from collectors.instances import InstanceCollector, InstanceTarget
from collectors.redis_common import RespConnection, pack
from collectors.runner import Runner
from collectors.scheduler import CollectorScheduler
from core.config import parse_config
from core.samples import Sample
from core.store import Store

PYTHON = sys.executable


async def floor_cycle(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], paths: tuple[str, ...]) -> None:
    """The floor: GETs on kept-alive connections, read headers and exactly Content-Length bytes, parse nothing."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for path in paths:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().index(b"content-length:") + 15
            await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))

    await asyncio.gather(*(one(r, w) for r, w in conns))


async def _cycles(
    runner: Runner, collector: InstanceCollector, targets: list[InstanceTarget], cycles: int
) -> tuple[list[float], list[float], list[list[Sample]]]:
    first = await runner.run_many(collector, targets)  # warm-up: opens the keep-alive connections
    assert sum(1 for s in first if s.metric == "up" and s.value == 1) == len(targets), "not every target answered"
    walls, cpus, batches = [], [], [first]
    for _ in range(cycles):
        wall, cpu = time.perf_counter(), time.process_time()
        samples = await runner.run_many(collector, targets)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert sum(1 for s in samples if s.metric == "up" and s.value == 1) == len(targets)
        batches.append(samples)
    return walls, cpus, batches


def _store_writes(batches: list[list[Sample]]) -> tuple[float, float, float, float]:
    """(median CPU s and wall s per cycle write, samples per cycle, samples/s of wall) writing each cycle in one
    batch to SQLite (as the scheduler's flush does)."""
    with tempfile.TemporaryDirectory(prefix="fleetdeck-bench-store-") as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        try:
            store.write_samples(batches[0])  # the first cycle creates the series: a one-off cost
            cpus, walls = [], []
            for batch in batches[1:]:
                wall, cpu = time.perf_counter(), time.process_time()
                store.write_samples(batch)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        finally:
            store.close()
    cpu_per_cycle, wall_per_cycle = statistics.median(cpus), statistics.median(walls)
    count = statistics.median(len(b) for b in batches[1:])
    return cpu_per_cycle, wall_per_cycle, count, count / wall_per_cycle


async def bench_instances(count: int, cycles: int, prometheus_window_s: float) -> None:
    served = start_targets(count)
    try:
        ports = served.ports
        figures: dict[str, tuple[float, float]] = {}
        store_figures = (0.0, 0.0, 0.0, 0.0)
        for label, metrics_path in (("health only", None), ("health + /metrics", "/metrics")):
            targets = [
                InstanceTarget(f"bench/i{i}", "bench", f"http://127.0.0.1:{p}", "/health", metrics_path, 5.0)
                for i, p in enumerate(ports)
            ]
            collector = InstanceCollector(fixed_targets=targets, max_connections=count)
            walls, cpus, batches = await _cycles(Runner(timeout_s=10), collector, targets, cycles)
            await collector.aclose()
            figures[label] = (statistics.median(walls), statistics.median(cpus))
            if metrics_path is not None:
                store_figures = _store_writes(batches)

        conns = [await asyncio.open_connection("127.0.0.1", p) for p in ports]
        await floor_cycle(conns, ("/health", "/metrics"))
        floor_walls, floor_cpus = [], []
        for _ in range(cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            await floor_cycle(conns, ("/health", "/metrics"))
            floor_walls.append(time.perf_counter() - wall)
            floor_cpus.append(time.process_time() - cpu)
        for _r, w in conns:
            w.close()

        prometheus = measure_prometheus(ports, window_s=prometheus_window_s) if prometheus_window_s > 0 else None
    finally:
        served.stop()
    wall, cpu = figures["health + /metrics"]
    health_wall, health_cpu = figures["health only"]
    floor_wall, floor_cpu = statistics.median(floor_walls), statistics.median(floor_cpus)
    per_target_us = cpu / count * 1e6
    write_cpu_s, write_wall_s, samples_per_cycle, samples_per_s = store_figures
    write_us = write_cpu_s / count * 1e6
    print(f"instances: {count} targets, /health + a prom-client /metrics page each, median of {cycles} cycles")
    print(f"  cycle wall          {wall * 1000:7.1f} ms   (goal <= 1000 ms)  {_verdict(wall <= 1.0)}")
    print(f"  poll+parse CPU      {per_target_us:7.1f} us/target   (health only: {health_cpu / count * 1e6:.1f} us,"
          f" wall {health_wall * 1000:.0f} ms)")  # fmt: skip
    print(f"  floor (2 GETs, no parsing) wall {floor_wall * 1000:.1f} ms, CPU {floor_cpu / count * 1e6:.1f} us/target;"
          f" collector/floor CPU {cpu / floor_cpu:.2f}x")  # fmt: skip
    print(f"  store write (SQLite, one batch per cycle) CPU {write_us:7.1f} us/target   (goal <= 150 us)"
          f"  {_verdict(write_us <= 150)}; wall {write_wall_s / count * 1e6:.1f} us/target")  # fmt: skip
    print(f"    {samples_per_cycle / count:.1f} samples/target/cycle, {samples_per_s:,.0f} samples/s")
    if prometheus is not None:
        print(f"  Prometheus ({prometheus.version}), same targets, {prometheus.interval_s:g}s interval,"
              f" {prometheus.scrapes} scrapes in {prometheus.window_s:g}s:")  # fmt: skip
        print(f"    CPU {prometheus.cpu_per_scrape_us:.0f} us/scrape, marginal (minus idle) "
              f"{prometheus.marginal_per_scrape_us:.0f} us/scrape")  # fmt: skip
        _ratios(per_target_us, prometheus.cpu_per_scrape_us, prometheus.marginal_per_scrape_us, "same run")
    else:
        stored = stored_prometheus()
        reason = "not installed" if shutil.which("prometheus") is None else "skipped (--prometheus-window 0)"
        if stored is None:
            print(f"  Prometheus {reason}; no stored figure (bench/prometheus_baseline.json)")
        else:
            print(f"  Prometheus {reason}; last stored figure ({stored.get('version')}):"
                  f" {float(stored['cpu_per_scrape_us']):.0f} us/scrape,"  # type: ignore[arg-type]
                  f" marginal {float(stored['marginal_per_scrape_us']):.0f} us")  # type: ignore[arg-type]  # fmt: skip
            _ratios(per_target_us, float(stored["cpu_per_scrape_us"]),  # type: ignore[arg-type]
                    float(stored["marginal_per_scrape_us"]), "stored figure, NOT the same run")  # type: ignore[arg-type]  # fmt: skip


def _ratios(ours_us: float, per_scrape_us: float, marginal_us: float, note: str) -> None:
    ratio = ours_us / per_scrape_us
    marginal = ours_us / marginal_us if marginal_us > 0 else float("inf")
    print(f"    ratio fleetdeck/Prometheus CPU per target: {ratio:.2f}x (goal <= 1.0x) {_verdict(ratio <= 1.0)};"
          f" vs its marginal cost {marginal:.2f}x (stretch <= 1.0x) {_verdict(marginal <= 1.0)}  [{note}]")  # fmt: skip


def bench_parse(rounds: int = 300) -> None:
    """/metrics parsing alone on the prom-client page: our reader against prometheus_client's (the old path)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = METRICS_PAGE.read_text()

    def best_of(parse: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                parse()
            best = min(best, (time.perf_counter() - started) / rounds)
        return best

    ours = best_of(lambda: parse_prometheus(text))
    reference = best_of(lambda: [s for family in text_string_to_metric_families(text) for s in family.samples])
    print(f"/metrics parsing, prom-client page ({len(text.splitlines())} lines), best of 5 x {rounds}:")
    print(f"  collectors.exposition {ours * 1e6:7.1f} us   prometheus_client parser {reference * 1e6:7.1f} us"
          f"   ratio {ours / reference:.3f}x")  # fmt: skip


def _verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


_RAW_COMMANDS = (
    ("LLEN", "wait"),
    ("LLEN", "paused"),
    ("LLEN", "active"),
    *(("ZCARD", z) for z in ("delayed", "prioritized", "waiting-children", "completed", "failed")),
)


async def bench_queues(url: str, count: int, ticks: int) -> None:
    prefix = f"fdbench{os.getpid()}"
    client = aioredis.Redis.from_url(url, decode_responses=True)
    queues = [f"q{i}" for i in range(count)]
    try:
        pipe = client.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for i, q in enumerate(queues):
            base = f"{prefix}:{q}:"
            pipe.hset(base + "meta", "opts.maxLenEvents", "10000")
            pipe.rpush(base + "wait", f"{i}-2", f"{i}-1")
            pipe.hset(base + f"{i}-1", "timestamp", str(now_ms))
            pipe.zadd(base + "completed", {f"{i}-0": now_ms})
            pipe.zadd(base + "delayed", {f"{i}-3": now_ms * 4096})
        await pipe.execute()
        collector = BullMQCollector(
            fixed_targets=[RedisTarget("bench", "bench", url, (prefix,), ())], discovery_interval_s=3600
        )
        target = collector.targets()[0]
        await collector.collect(target)  # discovery (SCAN) happens here, then on its slow cadence only
        tick_times = []
        for _ in range(ticks):
            started = time.perf_counter()
            samples = await collector.collect(target)
            tick_times.append(time.perf_counter() - started)
        assert sum(1 for s in samples if s.metric == "waiting" and s.value == 2) == count
        await collector.aclose()

        raw_times = []
        for _ in range(ticks):
            started = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for q in queues:
                base = f"{prefix}:{q}:"
                pipe.llen(base + "wait")
                pipe.llen(base + "paused")
                pipe.llen(base + "active")
                for zset in ("delayed", "prioritized", "waiting-children", "completed", "failed"):
                    pipe.zcard(base + zset)
            await pipe.execute()
            raw_times.append(time.perf_counter() - started)

        resp = RespConnection(url, 5.0)
        payload = b"".join(pack(command, f"{prefix}:{q}:{suffix}") for q in queues for command, suffix in _RAW_COMMANDS)
        await resp.pipeline(payload, 8 * count)
        resp_times = []
        for _ in range(ticks):
            started = time.perf_counter()
            await resp.pipeline(payload, 8 * count)
            resp_times.append(time.perf_counter() - started)
        await resp.aclose()
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        await client.aclose()
    tick, raw = statistics.median(tick_times), statistics.median(raw_times)
    resp_floor = statistics.median(resp_times)
    print(f"bullmq: {count} queues on one Redis, median of {ticks} ticks")
    print(f"  collector tick {tick * 1000:6.1f} ms  (goal <= 30 ms)")
    print(f"  raw LLEN/ZCARD pipeline {raw * 1000:6.1f} ms   ratio {tick / raw:.2f}x  (goal <= 1.2x)")
    print(f"  same 8 cmds/queue, bare RESP {resp_floor * 1000:6.1f} ms   ratio {tick / resp_floor:.2f}x  (info)")


def bench_scale(count: int, interval_s: float, duration_s: float) -> None:
    """The real scheduler polling ``count`` targets (/health + /metrics) every ``interval_s`` into SQLite."""
    served = start_targets(count)
    try:
        with tempfile.TemporaryDirectory(prefix="fleetdeck-bench-scale-") as tmp:
            targets = [
                InstanceTarget(f"bench/i{i}", "bench", f"http://127.0.0.1:{p}", "/health", "/metrics", 5.0)
                for i, p in enumerate(served.ports)
            ]
            config = parse_config(
                {"state_dir": f"{tmp}/run", "store": {"url": f"sqlite:///{tmp}/fd.db"},
                 "services": [{"name": "web", "command": "true {port} {instance_id}",
                               "ports": {"start": 20000, "end": 20010}}],
                 "collectors": {"instances_s": interval_s, "timeout_s": 5}},
                base_dir=Path(tmp),
            )  # fmt: skip
            store = Store(config.store_url)
            write_seconds = [0.0]
            real_write = store.write_samples

            def timed_write(samples: list[Sample]) -> int:
                started = time.perf_counter()
                try:
                    return real_write(samples)
                finally:
                    write_seconds[0] += time.perf_counter() - started

            store.write_samples = timed_write  # type: ignore[method-assign]
            collector = InstanceCollector(fixed_targets=targets, max_connections=min(count, 1024))
            scheduler = CollectorScheduler(config, store, collectors=[collector], intervals={"instances": interval_s})
            cpu, wall = time.process_time(), time.perf_counter()
            scheduler.start()
            rss_samples = []
            try:
                end = time.monotonic() + duration_s
                while time.monotonic() < end:
                    time.sleep(1.0)
                    rss_samples.append(rss_mb())
            finally:
                scheduler.stop()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            latest_up = store.latest(metric="up", source="instance")
            ups = [x for x in latest_up if x.value == 1]
            errors: dict[str, int] = {}
            for x in latest_up:
                if x.value != 1:
                    reason = (x.text or "?").split(" from ")[0].split(" 127.0.0.1")[0][:60]
                    errors[reason] = errors.get(reason, 0) + 1
            store.close()
    finally:
        served.stop()
    cycles, skipped, late, _lag = scheduler.schedule_counts.get("instances", [0, 0, 0, 0.0])
    expected = count * int(duration_s // interval_s)
    print(f"scale: {count} targets (/health + /metrics) every {interval_s:g}s for {duration_s:g}s, real scheduler")
    print(f"  runs started {int(cycles):,} (about {expected:,} expected), skipped {int(skipped):,}, late (>1 s)"
          f" {int(late):,}  {_verdict(skipped == 0)}")  # fmt: skip
    print(f"  targets up at the end {len(ups):,}/{count:,}; collector process CPU {cpu / wall * 100:.0f}% of one core")
    for reason, seen in sorted(errors.items(), key=lambda item: -item[1])[:3]:
        print(f"    down: {seen:,} x {reason}")
    print(f"  store writes took {write_seconds[0] / wall * 100:.0f}% of the wall time; samples written"
          f" {scheduler.writer.written_total:,}, dropped from a full backlog {scheduler.writer.dropped_total:,}"
          f"  {_verdict(scheduler.writer.dropped_total == 0)}")
    print(f"  collector RSS {statistics.median(rss_samples):.0f} MB median, peak {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--redis", default=os.environ.get("FLEETDECK_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--prometheus-window", type=float, default=20.0, help="seconds of Prometheus scraping; 0 skips")
    parser.add_argument("--scale", type=int, default=0, help="also run the real scheduler on this many targets")
    parser.add_argument("--scale-interval", type=float, default=10.0)
    parser.add_argument("--scale-seconds", type=float, default=45.0)
    parser.add_argument("--only-scale", action="store_true", help="skip the 1,000-target and queue figures")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if not args.only_scale:
        bench_parse()
        runner(bench_instances(args.targets, args.cycles, args.prometheus_window))
        runner(bench_queues(args.redis, args.queues, max(10, args.cycles * 4)))
    if args.scale:
        bench_scale(args.scale, args.scale_interval, args.scale_seconds)


if __name__ == "__main__":
    main()
