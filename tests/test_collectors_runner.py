"""The runner firewall, the metric registry and the alert rules (pure logic, no network)."""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import pytest

from collectors.alerts import AlertEvaluator
from collectors.base import LATENCY, UP, MetricRegistry, MetricSpec
from collectors.runner import Runner
from core.samples import Sample


class FakeTarget(NamedTuple):
    key: str


class ScriptedCollector:
    """A collector whose behaviour the test picks: this is the thing under the firewall, not a mock of it."""

    name = "scripted"
    source = "scripted"
    registry = MetricRegistry("scripted", [UP, LATENCY, MetricSpec("value", "count", "a value")])

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def targets(self) -> list[FakeTarget]:
        return [FakeTarget("t1")]

    async def collect(self, target: FakeTarget) -> list[Sample]:
        if self.behaviour == "raise":
            raise ConnectionRefusedError("connection refused by 127.0.0.1:1")
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if self.behaviour == "empty":
            return []
        ts = time.time()
        # deliberately out of order: the runner must put up/latency_ms first
        return [
            self.registry.sample(target.key, "value", 7, ts),
            self.registry.sample(target.key, "latency_ms", 1.5, ts),
            self.registry.sample(target.key, "up", 1, ts),
        ]

    async def aclose(self) -> None:
        return None


def _metrics(samples: list[Sample]) -> list[str]:
    return [s.metric for s in samples]


def test_raising_collector_becomes_up0_with_error_text() -> None:
    runner = Runner(timeout_s=1)
    samples = asyncio.run(runner.run(ScriptedCollector("raise"), FakeTarget("t1")))
    assert samples[0].metric == "up" and samples[0].value == 0
    assert "ConnectionRefusedError" in (samples[0].text or "") and "refused" in (samples[0].text or "")
    assert samples[1].metric == "latency_ms"
    by_metric = {s.metric: s for s in samples if s.source == "collector"}
    assert by_metric["errors_total"].value == 1 and by_metric["errors_total"].target == "scripted/t1"
    assert "last_success_ts" not in by_metric


def test_hanging_collector_times_out_without_raising() -> None:
    runner = Runner(timeout_s=0.2)
    started = time.monotonic()
    samples = asyncio.run(runner.run(ScriptedCollector("hang"), FakeTarget("t1")))
    assert time.monotonic() - started < 2
    assert samples[0].value == 0 and "timeout" in (samples[0].text or "")


def test_one_hanging_target_does_not_delay_the_others() -> None:
    class Mixed(ScriptedCollector):
        async def collect(self, target: FakeTarget) -> list[Sample]:
            self.behaviour = "hang" if target.key == "slow" else "ok"
            return await super().collect(target)

    runner = Runner(timeout_s=0.3)
    samples = asyncio.run(runner.run_many(Mixed("ok"), [FakeTarget("slow"), FakeTarget("fast")]))
    ups = {s.target: s.value for s in samples if s.metric == "up"}
    assert ups == {"slow": 0.0, "fast": 1.0}


def test_success_puts_up_and_latency_first_and_counts_errors_across_runs() -> None:
    runner = Runner(timeout_s=1)
    collector = ScriptedCollector("ok")
    first = asyncio.run(runner.run(collector, FakeTarget("t1")))
    assert _metrics(first)[:3] == ["up", "latency_ms", "value"]
    collector.behaviour = "empty"
    second = asyncio.run(runner.run(collector, FakeTarget("t1")))
    assert second[0].value == 0 and "no samples" in (second[0].text or "")
    self_metrics = {s.metric: s.value for s in second if s.source == "collector"}
    assert self_metrics["errors_total"] == 1
    first_self = {s.metric: s.value for s in first if s.source == "collector"}
    assert self_metrics["last_success_ts"] == first_self["last_success_ts"]  # unchanged by the failed run
    assert abs(first_self["last_success_ts"] - first[0].ts) < 1


def test_registry_refuses_undeclared_metric_and_duplicates() -> None:
    registry = MetricRegistry("x", [UP])
    with pytest.raises(KeyError):
        registry.sample("t", "nope", 1, 0.0)
    with pytest.raises(ValueError):
        MetricRegistry("x", [UP, UP])
    assert registry.sample("t", "up", 1, 0.0).unit == "bool"


def _s(source: str, target: str, metric: str, value: float, text: str | None = None) -> Sample:
    return Sample(source, target, metric, value, time.time(), "", (), text)


def test_alert_rules_fire_and_resolve() -> None:
    alerts = AlertEvaluator()
    q = "main/bull:emails"
    out = alerts.evaluate(
        [
            _s("instance", "web/web-1", "up", 0, "ClientConnectorError: refused"),
            _s("bullmq", q, "waiting", 3),
            _s("bullmq", q, "workers", 0),
            _s("bullmq", q, "paused", 0),
            _s("bullmq", q, "completed_per_s", 1.0),
            _s("bullmq", q, "failed_per_s", 1.0),
            _s("redis", "redis:main", "maxmemory_policy", 0, "allkeys-lru"),
            _s("postgres", "postgres:main", "headroom_ratio", 0.1),
            _s("postgres", "postgres:main", "headroom", 9),
            _s("postgres", "postgres:main", "lock_waiters", 2),
        ]
    )
    firing = {s.target: s.value for s in out}
    assert firing["instance_down/web/web-1"] == 1
    assert firing[f"queue_no_workers/{q}"] == 1
    assert firing[f"failure_ratio/{q}"] == 1
    assert firing["redis_eviction_policy/redis:main"] == 1
    assert firing["db_headroom/postgres:main"] == 1
    assert firing["lock_waiters/postgres:main"] == 1
    assert firing[f"backlog_growing/{q}"] == 0
    # paused queue: no "no workers" alert; waiting grows 5 ticks: backlog alert
    for waiting in (4, 5, 6, 7, 8):
        out = alerts.evaluate([_s("bullmq", q, "waiting", waiting), _s("bullmq", q, "paused", 1)])
    firing = {s.target: s.value for s in out}
    assert firing[f"queue_no_workers/{q}"] == 0
    assert firing[f"backlog_growing/{q}"] == 1
    out = alerts.evaluate([_s("instance", "web/web-1", "up", 1)])
    assert {s.target: s.value for s in out}["instance_down/web/web-1"] == 0
