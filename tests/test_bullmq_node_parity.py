"""fleetdeck's BullMQ collector against Node BullMQ itself: queues put into known states (waiting, active with a
Node worker really processing, delayed, prioritized, waiting-children, completed, failed, paused, LIFO) by
tests/node_standin/bullmq_states.js, and the collector's numbers held against Node's getJobCounts, isPaused and
getWorkers, and the oldest waiting job's timestamp."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.bullmq import BullMQCollector, RedisTarget
from collectors.runner import Runner
from tests.support import REPO_ROOT

SCRIPT = Path(REPO_ROOT) / "tests" / "node_standin" / "bullmq_states.js"
NODE_TYPES = {"active": "active", "delayed": "delayed", "prioritized": "prioritized",
              "waiting-children": "waiting_children", "completed": "completed", "failed": "failed"}  # fmt: skip


class NodeQueues:
    """The Node helper process; stopped by its PID."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "REDIS_URL": redis_url, "BULLMQ_PREFIX": prefix}, text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the Node helper exited: {stderr}")
        return dict(json.loads(line))

    def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("report\n")
        self.process.stdin.flush()
        return dict(self.read()["report"])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=15)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def node_queues(redis_url: str, redis_prefix: str) -> Iterator[NodeQueues]:
    helper = NodeQueues(redis_url, redis_prefix)
    try:
        yield helper
    finally:
        helper.close()


def collect(redis_url: str, prefix: str) -> tuple[dict[str, dict[str, float]], float]:
    collector = BullMQCollector(fixed_targets=[RedisTarget("main", "main", redis_url, (prefix,), ())])

    async def run() -> list[Any]:
        try:
            return await Runner(timeout_s=10).run_many(collector, collector.targets())
        finally:
            await collector.aclose()

    collected_at = time.time()
    by_queue: dict[str, dict[str, float]] = {}
    for sample in asyncio.run(run()):
        if sample.target.startswith(f"main/{prefix}:"):
            by_queue.setdefault(sample.target.split(":", 1)[1], {})[sample.metric] = sample.value
    return by_queue, collected_at


def test_collector_matches_node_bullmq(node_queues: NodeQueues, redis_url: str, redis_prefix: str) -> None:
    first = node_queues.read()
    assert first["ready"]
    collected, collected_at = collect(redis_url, redis_prefix)
    node = node_queues.report()  # the states are stable: the Node worker is busy with its long job
    assert node == {**first["report"]}, "the queues moved while being read"

    states = node["states"]["counts"]
    # the scenario is what we think it is
    assert (states["completed"], states["failed"], states["active"], states["waiting"], states["prioritized"],
            states["delayed"], states["waiting-children"]) == (1, 1, 1, 3, 1, 1, 1)
    assert node["paused"]["isPaused"] and node["states"]["workers"] == 1

    for name in ("states", "paused", "lifo"):
        ours, theirs = collected[name], node[name]
        for node_type, metric in NODE_TYPES.items():
            assert ours[metric] == theirs["counts"][node_type], (name, metric, ours, theirs)
        # waiting: BullMQ v6 keeps a paused queue's jobs in `wait`; older layouts count them as `paused`
        assert ours["waiting"] == theirs["counts"]["waiting"] + theirs["counts"].get("paused", 0), (name, ours)
        assert ours["paused"] == (1 if theirs["isPaused"] else 0), name
        assert ours["workers"] == theirs["workers"], (name, ours, theirs)
        oldest = theirs["oldestWaitingTimestamp"]
        expected_age = collected_at - oldest / 1000.0 if oldest is not None else 0.0
        assert abs(ours["oldest_waiting_age_s"] - expected_age) < 1.0, (name, ours, expected_age)

    # LIFO jobs sit at the end BullMQ takes next: the age is still the first-in job's, added 1.5 s earlier
    assert collected["lifo"]["oldest_waiting_age_s"] >= 1.4
