"""The autoscaling decision as plain functions: HPA math, tolerance, stabilization windows, steps, bounds."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from actions.autoscale_logic import Decision, Observation, Recommendation, decide, stabilize
from core.config_autoscale import AutoscalePolicy


def policy(**values: Any) -> AutoscalePolicy:
    return AutoscalePolicy.model_validate({"mode": "auto", **values})


def once(p: AutoscalePolicy, obs: Observation, bounds: tuple[int, int] = (1, 10)) -> Decision:
    return decide(p, obs, [], bounds)[0]


def replay(p: AutoscalePolicy, load: Callable[[float, int], Observation], seconds: float, start: int,
           bounds: tuple[int, int] = (1, 10)) -> list[int]:
    """Decisions every interval, acting on each one at once; the replica count after each decision."""
    current, history, counts = start, [], []
    ts = 0.0
    while ts <= seconds:
        decision, history = decide(p, load(ts, current), history, bounds)
        current = decision.desired
        counts.append(current)
        ts += p.interval_s
    return counts


def test_hpa_formula_tolerance_and_the_largest_metric_wins() -> None:
    cpu = policy(cpu_percent=60)
    up = once(cpu, Observation(0, 2, cpu_percent=90))
    assert up.desired == 3 and "ceil(2 × 90% / 60%) = 3" in up.summary()
    assert once(cpu, Observation(0, 2, cpu_percent=64)).desired == 2  # 1.07: inside ±0.1
    assert once(cpu, Observation(0, 4, cpu_percent=20)).recommendation == 2
    both = policy(cpu_percent=60, rps_per_replica=40)
    decision = once(both, Observation(0, 2, cpu_percent=90, rps_total=200))
    assert decision.desired == 5 and "largest is rps_per_replica: 5" in decision.summary()
    assert [m.name for m in decision.metrics] == ["cpu_percent", "rps_per_replica"]


def test_backlog_per_worker_is_kedas_total_over_target_even_from_zero() -> None:
    backlog = policy(queue_backlog={"queues": ["main/bull:jobs"], "per_worker": 100}, max_step_up=10)
    assert once(backlog, Observation(0, 1, backlog=450)).desired == 5
    assert once(backlog, Observation(0, 0, backlog=450), bounds=(0, 10)).desired == 5
    assert once(backlog, Observation(0, 3, backlog=0)).recommendation == 0


def test_step_and_bounds_limit_and_say_so() -> None:
    rps = policy(rps_per_replica=10, max_step_up=2, scale_down_window=0, max_step_down=3)
    stepped = once(rps, Observation(0, 2, rps_total=200))
    assert stepped.desired == 4 and "max_step_up 2" in stepped.summary()
    capped = once(policy(rps_per_replica=10, max_step_up=50), Observation(0, 2, rps_total=200), bounds=(1, 6))
    assert capped.desired == 6 and "max 6" in capped.summary()
    assert once(rps, Observation(0, 8, rps_total=0)).desired == 5  # down by at most 3
    assert once(rps, Observation(0, 3, rps_total=0), bounds=(2, 6)).desired == 2


def test_no_fresh_data_keeps_the_count() -> None:
    decision = once(policy(cpu_percent=60, p95_ms=200), Observation(0, 3))
    assert decision.desired == 3 and decision.recommendation is None and "no fresh data" in decision.summary()


def test_scale_down_waits_for_the_whole_window_then_steps_down() -> None:
    p = policy(rps_per_replica=20, interval="15s", scale_down_window="2m", max_step_down=1)

    def load(ts: float, current: int) -> Observation:
        return Observation(ts, current, rps_total=100 if ts < 60 else 5)

    counts = replay(p, load, 600, start=1)
    assert counts[0] == 5  # ceil(100 / 20) at once (max_step_up 4: 1 + 4)
    low_from = 60 // 15
    window_steps = 120 // 15
    assert counts[low_from : low_from + window_steps] == [5] * window_steps  # the window holds the count
    assert counts[low_from + window_steps] == 4  # then one step per decision
    assert counts[-1] == 1 and all(b <= a for a, b in zip(counts[low_from:], counts[low_from + 1:], strict=False))


def test_flapping_load_does_not_oscillate() -> None:
    p = policy(cpu_percent=50, interval="15s", scale_down_window="5m")

    def flapping(ts: float, current: int) -> Observation:
        busy = int(ts // 30) % 2 == 0  # 30 s busy, 30 s idle, for an hour
        total_cpu = 300 if busy else 30  # CPU % summed over replicas: spreads over however many run
        return Observation(ts, current, cpu_percent=total_cpu / current)

    counts = replay(p, flapping, 3600, start=2)
    changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    assert changes <= 1, counts  # up once to what the peaks need, then steady
    assert max(counts) == 6 and counts[-1] == 6


def test_stabilize_uses_the_highest_recommendation_of_the_down_window() -> None:
    history = [Recommendation(0, 6), Recommendation(100, 2), Recommendation(200, 3)]
    assert stabilize(5, 1, history, 250, 0, 300) == 5  # 6 is still in the window: hold (never above current)
    assert stabilize(5, 1, history, 350, 0, 300) == 3
    assert stabilize(2, 4, history, 250, 0, 300) == 4
    assert stabilize(2, 4, history, 250, 60, 300) == 3  # up window: lowest of the last 60 s
