"""BullMQ and Redis INFO collectors against real Redis, queues made with the real PyPI bullmq."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time

import redis
from bullmq import FlowProducer, Queue, Worker

from collectors.bullmq import BullMQCollector, RedisTarget
from collectors.redis_info import RedisInfoCollector
from collectors.runner import Runner
from tests.support import free_port

COUNT_KEYS = {
    "waiting": "waiting", "active": "active", "delayed": "delayed", "prioritized": "prioritized",
    "waiting-children": "waiting_children", "completed": "completed", "failed": "failed",
}  # fmt: skip


def _queue_metrics(samples: list, target: str) -> dict[str, float]:
    return {s.metric: s.value for s in samples if s.target == target}


async def _until(predicate, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not reached")


def test_counts_match_getjobcounts_and_workers_dedupe(redis_url: str, redis_prefix: str) -> None:
    conn = {"connection": redis_url, "prefix": redis_prefix}

    async def scenario() -> None:
        queue = Queue("parity", conn)
        collector = BullMQCollector(
            fixed_targets=[RedisTarget("main", "main", redis_url, (redis_prefix,), ())], discovery_interval_s=0
        )
        runner = Runner(timeout_s=5)
        target = f"main/{redis_prefix}:parity"

        async def process(job, token):  # type: ignore[no-untyped-def]
            if job.name == "boom":
                raise RuntimeError("boom")
            return "done"

        worker = Worker("parity", process, {**conn, "metrics": {"maxDataPoints": 100}, "name": "w1"})
        await queue.add("ok", {})
        await queue.add("boom", {}, {"attempts": 1})
        await _until(lambda: _done(queue))
        # the Python worker names two connections (pool + blocking): it must count once
        await _until(lambda: _named_connections(redis_url, f"{redis_prefix}:parity:w:w1", 2))
        running = _queue_metrics(await runner.run(collector, collector.targets()[0]), target)
        assert running["workers"] == 1
        await worker.close()

        for i in range(3):
            await queue.add("wait", {"i": i})
        await queue.add("prio", {}, {"priority": 5})
        await queue.add("later", {}, {"delay": 600_000})
        flow = FlowProducer(conn)
        await flow.add(
            {"name": "parent", "queueName": "parity", "children": [{"name": "child", "queueName": "parity"}]}
        )
        expected = await queue.getJobCounts()
        assert expected["waiting-children"] == 1 and expected["failed"] == 1  # the scenario is what we think

        # a Node worker's connection: CLIENT SETNAME <prefix>:<base64(queue)>:w:<name>, one connection per worker
        node_like = redis.Redis.from_url(redis_url)
        node_like.client_setname(f"{redis_prefix}:{base64.b64encode(b'parity').decode()}:w:node-1")
        try:
            samples = await runner.run(collector, collector.targets()[0])
        finally:
            node_like.close()
        got = _queue_metrics(samples, target)
        assert {k: got[v] for k, v in COUNT_KEYS.items()} == expected
        assert got["workers"] == 1  # the Python worker is closed; the Node-like connection counts once
        assert got["paused"] == 0 and got["oldest_waiting_age_s"] > 0

        await queue.pause()
        paused = _queue_metrics(await runner.run(collector, collector.targets()[0]), target)
        expected = await queue.getJobCounts()
        assert {k: paused[v] for k, v in COUNT_KEYS.items()} == expected
        assert paused["paused"] == 1
        # metrics:completed count is 1 and did not move: a real (zero) rate, not the ZCOUNT fallback
        assert paused["completed_per_s"] == 0.0
        await flow.close()
        await queue.obliterate(force=True)
        await queue.close()
        await collector.aclose()

    asyncio.run(scenario())


async def _done(queue: Queue) -> bool:
    counts = await queue.getJobCounts("completed", "failed")
    return counts["completed"] == 1 and counts["failed"] == 1


async def _named_connections(redis_url: str, name: str, at_least: int) -> bool:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name) >= at_least
    finally:
        client.close()


def test_v5_layout_paused_list_and_legacy_marker(redis_url: str, redis_prefix: str) -> None:
    """A queue as BullMQ v5 leaves it when paused: wait renamed to `paused`; and a legacy `0:` marker in wait."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now_ms = int(time.time() * 1000)
    try:
        client.hset(f"{redis_prefix}:old:meta", mapping={"paused": "1", "version": "bullmq:5.1.0"})
        client.rpush(f"{redis_prefix}:old:paused", "3", "2", "1")  # LPUSH order: oldest at the tail
        for job_id in ("1", "2", "3"):
            client.hset(f"{redis_prefix}:old:{job_id}", mapping={"timestamp": str(now_ms - 60_000), "name": "x"})
        client.hset(f"{redis_prefix}:marked:meta", "opts.maxLenEvents", "10000")
        client.rpush(f"{redis_prefix}:marked:wait", "7", "0:0")
        client.hset(f"{redis_prefix}:marked:7", "timestamp", str(now_ms))
        collector = BullMQCollector(fixed_targets=[RedisTarget("main", "main", redis_url, (redis_prefix,), ())])
        samples = asyncio.run(_run_and_close(collector))
        old = _queue_metrics(samples, f"main/{redis_prefix}:old")
        assert old["waiting"] == 3 and old["paused"] == 1
        assert 59 <= old["oldest_waiting_age_s"] <= 120
        marked = _queue_metrics(samples, f"main/{redis_prefix}:marked")
        assert marked["waiting"] == 1  # the marker is not a job (getJobCounts does not count it either)
        assert client.llen(f"{redis_prefix}:marked:wait") == 2  # and we never RPOP it
    finally:
        client.close()


async def _run_and_close(collector, runner: Runner | None = None) -> list:  # type: ignore[no-untyped-def]
    try:
        return await (runner or Runner(timeout_s=5)).run_many(collector, collector.targets())
    finally:
        await collector.aclose()


def test_stopped_redis_reports_up0_and_others_unaffected(redis_url: str, redis_prefix: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        throwaway = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(throwaway).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        targets = [
            RedisTarget("gone", "gone", throwaway, (redis_prefix,), ("emails",)),
            RedisTarget("main", "main", redis_url, (redis_prefix,), ("emails",)),
        ]
        info_targets = [t._replace(key=f"redis:{t.name}") for t in targets]
        bull = BullMQCollector(fixed_targets=targets)
        info = RedisInfoCollector(fixed_targets=info_targets)
        runner = Runner(timeout_s=3)

        async def both() -> list:  # type: ignore[type-arg]
            return [*(await runner.run_many(bull, targets)), *(await runner.run_many(info, info_targets))]

        async def scenario() -> tuple[list, list]:  # type: ignore[type-arg]
            before = await both()
            proc.terminate()
            proc.wait(10)
            after = await both()
            await bull.aclose()
            await info.aclose()
            return before, after

        before, after = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    up_before = {(s.source, s.target): s.value for s in before if s.metric == "up"}
    assert up_before == {
        ("bullmq", "gone"): 1,
        ("bullmq", "main"): 1,
        ("redis", "redis:gone"): 1,
        ("redis", "redis:main"): 1,
    }
    up_after = {(s.source, s.target): s for s in after if s.metric == "up"}
    assert up_after[("bullmq", "gone")].value == 0 and "onnect" in (up_after[("bullmq", "gone")].text or "")
    assert up_after[("redis", "redis:gone")].value == 0 and up_after[("redis", "redis:gone")].text
    assert up_after[("bullmq", "main")].value == 1 and up_after[("redis", "redis:main")].value == 1
    main_info = {s.metric: s for s in after if s.target == "redis:main"}
    assert main_info["maxmemory_policy"].text and main_info["connected_clients"].value >= 1
    assert "ops_per_s" in main_info  # second tick: a rate exists
    assert any(s.target == f"main/{redis_prefix}:emails" and s.metric == "waiting" for s in after)
