"""Collector benchmarks (prints figures; not a test).

1. 1,000 health targets on loopback: one server process listening on 1,000 ports with Express-like JSON bodies.
   One full InstanceCollector cycle (through the runner firewall): wall time and collector CPU per target poll
   (goals: <= 1 s and <= 150 us). Floor, same run: a minimal asyncio-streams HTTP/1.1 keep-alive GET loop that
   reads each body and parses nothing. Prints the ratio.
2. 200 BullMQ queues on one Redis: BullMQCollector tick (goal <= 30 ms) vs a raw LLEN/ZCARD pipeline over the same
   queues through redis-py (goal <= 1.2x). For information, the same 8 commands per queue sent prepared over the
   collector's own bare RESP connection: what the collector's extra commands, parsing and samples cost on top.

Run: .venv/bin/python bench/bench_collectors.py [--targets 1000] [--queues 200] [--cycles 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis.asyncio as aioredis

from collectors.bullmq import BullMQCollector, RedisTarget
from collectors.instances import InstanceCollector, InstanceTarget
from collectors.redis_common import RespConnection, pack
from collectors.runner import Runner

PYTHON = sys.executable
BODY = json.dumps(
    {
        "status": "ok",
        "uptime": 1234.5,
        "version": "1.0.0",
        "memory": {"rss": 81_000_000, "heapTotal": 40_000_000, "heapUsed": 30_000_000, "external": 2_000_000},
        "database": {"pool": {"totalCount": 10, "idleCount": 8, "waitingCount": 0}},
    }
)

# One uvloop process, N listening sockets, a keep-alive HTTP/1.1 responder (never the bottleneck under test).
SERVER = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
count, body = int(sys.argv[1]), sys.argv[2].encode()
response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nConnection: keep-alive\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(response)
async def main():
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        server = await loop.create_server(Proto, "127.0.0.1", 0, backlog=64)
        ports.append(server.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def floor_cycle(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], ports: list[int]) -> None:
    """The floor: GET on each kept-alive connection, read headers and exactly Content-Length bytes, parse nothing."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        at = head.lower().index(b"content-length:") + 15
        await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))

    await asyncio.gather(*(one(r, w, p) for (r, w), p in zip(conns, ports, strict=True)))


async def bench_health(count: int, cycles: int) -> None:
    proc = subprocess.Popen([PYTHON, "-c", SERVER, str(count), BODY], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        targets = [
            InstanceTarget(f"bench/i{i}", "bench", f"http://127.0.0.1:{p}", "/health", None, 5.0)
            for i, p in enumerate(ports)
        ]
        collector = InstanceCollector(fixed_targets=targets, max_connections=count)
        runner = Runner(timeout_s=10)
        first = await runner.run_many(collector, targets)  # warm-up: opens the keep-alive connections
        assert sum(1 for s in first if s.metric == "up" and s.value == 1) == count, "not every target answered"
        walls, cpus = [], []
        for _ in range(cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            samples = await runner.run_many(collector, targets)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            assert sum(1 for s in samples if s.metric == "up" and s.value == 1) == count
        await collector.aclose()

        conns = [await asyncio.open_connection("127.0.0.1", p) for p in ports]
        await floor_cycle(conns, ports)
        floor_walls, floor_cpus = [], []
        for _ in range(cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            await floor_cycle(conns, ports)
            floor_walls.append(time.perf_counter() - wall)
            floor_cpus.append(time.process_time() - cpu)
        for _r, w in conns:
            w.close()
    finally:
        proc.terminate()
        proc.wait(10)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    floor_wall, floor_cpu = statistics.median(floor_walls), statistics.median(floor_cpus)
    print(f"health: {count} targets, median of {cycles} cycles (warm keep-alive)")
    print(f"  collector cycle wall {wall * 1000:7.1f} ms  (goal <= 1000 ms)")
    print(f"  collector CPU/target {cpu / count * 1e6:7.1f} us  (goal <= 150 us)")
    print(f"  floor     cycle wall {floor_wall * 1000:7.1f} ms   CPU/target {floor_cpu / count * 1e6:6.1f} us")
    print(f"  ratio collector/floor: wall {wall / floor_wall:.1f}x, CPU {cpu / floor_cpu:.1f}x")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--redis", default=os.environ.get("FLEETDECK_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(bench_health(args.targets, args.cycles))
    runner(bench_queues(args.redis, args.queues, max(10, args.cycles * 4)))


if __name__ == "__main__":
    main()
