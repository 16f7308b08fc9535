"""The autoscaling decision, as plain functions of plain data: no store, no clock, no I/O (docs/autoscaling.md).

Per metric, the Kubernetes HPA rule: ``desired = ceil(current × value / target)``, where ``value`` is the metric
per replica (mean CPU %, p95 latency, requests/s ÷ replicas, waiting jobs ÷ replicas — the last two make it
``ceil(total / target)``, KEDA's rule), unless ``|value / target − 1|`` is within the tolerance (then: current).
With no replica running, the totals still give ``ceil(total / target)``; CPU and latency give nothing.

The recommendation is the largest any metric asks for. Then, as the HPA does:

- stabilization: every recommendation is remembered with its time; scaling up goes to the *lowest*
  recommendation of the last ``scale_up_window`` (0: the current one), scaling down to the *highest* of the last
  ``scale_down_window`` — so a dip has to last the whole window before a replica goes, and flapping load never
  makes the count oscillate;
- a step bound: at most ``max_step_up`` replicas more, ``max_step_down`` fewer per decision;
- the bounds ``[min, max]`` (the service's, or the admin's override).

:func:`decide` returns a :class:`Decision` carrying every input, the formula of each metric and the reasons, so
each decision can be stored and explained as it was made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from core.config_autoscale import AutoscalePolicy


class Observation(NamedTuple):
    """What the fleet looked like at `ts`: replica count and the metrics (None: no fresh data)."""

    ts: float
    current: int
    cpu_percent: float | None = None  # mean over the replicas
    p95_ms: float | None = None
    rps_total: float | None = None  # requests/s to the whole service
    backlog: float | None = None  # waiting jobs over the policy's queues


class Recommendation(NamedTuple):
    ts: float
    replicas: int


@dataclass
class MetricResult:
    name: str
    value: float  # per replica (cpu_percent, p95_ms, rps_per_replica, backlog_per_worker)
    target: float
    ratio: float
    desired: int
    within_tolerance: bool
    formula: str


@dataclass
class Decision:
    ts: float
    current: int
    desired: int  # what the policy wants now, after stabilization, step and bounds
    recommendation: int | None  # the largest any metric asked for (None: no data)
    stabilized: int
    metrics: list[MetricResult] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    bounds: tuple[int, int] = (0, 0)

    @property
    def change(self) -> int:
        return self.desired - self.current

    def summary(self) -> str:
        verb = "keep" if self.change == 0 else ("scale up" if self.change > 0 else "scale down")
        head = f"{verb} {self.current} → {self.desired}" if self.change else f"keep {self.current}"
        return f"{head}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change, "summary": self.summary()}


def _per_metric(name: str, value: float, target: float, current: int, tolerance: float, unit: str,
                total: float | None = None) -> MetricResult:
    ratio = value / target
    if current == 0:
        # nothing runs: only a total (requests, jobs) says how many are needed
        desired = math.ceil((total or 0.0) / target)
        return MetricResult(name, value, target, ratio, desired, False,
                            f"ceil({total or 0:g} total / {target:g}{unit}) = {desired}")
    if abs(ratio - 1.0) <= tolerance:
        return MetricResult(name, value, target, ratio, current, True,
                            f"{value:.3g}{unit} / {target:g}{unit} = {ratio:.2f}, within ±{tolerance:g}: {current}")
    # the small epsilon keeps a float like 3.0000000004 from asking for one replica more
    desired = math.ceil(current * ratio - 1e-9)
    return MetricResult(name, value, target, ratio, desired, False,
                        f"ceil({current} × {value:.3g}{unit} / {target:g}{unit}) = {desired}")


def metric_results(policy: AutoscalePolicy, obs: Observation) -> tuple[list[MetricResult], list[str]]:
    """Each configured metric's desired count, and which ones had no data."""
    results: list[MetricResult] = []
    missing: list[str] = []
    current, tolerance = obs.current, policy.tolerance
    if policy.cpu_percent is not None:
        if obs.cpu_percent is None or current == 0:
            missing.append("cpu_percent")
        else:
            results.append(_per_metric("cpu_percent", obs.cpu_percent, policy.cpu_percent, current, tolerance, "%"))
    if policy.p95_ms is not None:
        if obs.p95_ms is None or current == 0:
            missing.append("p95_ms")
        else:
            results.append(_per_metric("p95_ms", obs.p95_ms, policy.p95_ms, current, tolerance, " ms"))
    if policy.rps_per_replica is not None:
        if obs.rps_total is None:
            missing.append("rps_per_replica")
        else:
            per = obs.rps_total / max(current, 1)
            results.append(_per_metric("rps_per_replica", per, policy.rps_per_replica, current, tolerance, " rps",
                                       obs.rps_total))
    if policy.queue_backlog is not None:
        if obs.backlog is None:
            missing.append("backlog_per_worker")
        else:
            per = obs.backlog / max(current, 1)
            results.append(_per_metric("backlog_per_worker", per, policy.queue_backlog.per_worker, current,
                                       tolerance, " jobs", obs.backlog))
    return results, missing


def stabilize(current: int, recommendation: int, history: Sequence[Recommendation], now: float,
              up_window_s: float, down_window_s: float) -> int:
    """The HPA's stabilization: up to the lowest recommendation of the up window, down to the highest of the
    down window (both windows include `recommendation` itself)."""
    up_rec = min([recommendation, *(r.replicas for r in history if now - r.ts <= up_window_s)])
    down_rec = max([recommendation, *(r.replicas for r in history if now - r.ts <= down_window_s)])
    if current < up_rec:
        return up_rec
    if current > down_rec:
        return down_rec
    return current


def decide(policy: AutoscalePolicy, obs: Observation, history: Sequence[Recommendation],
           bounds: tuple[int, int]) -> tuple[Decision, list[Recommendation]]:
    """The decision for `obs`, and the recommendation history to keep for the next one (pruned to the windows)."""
    low, high = bounds
    results, missing = metric_results(policy, obs)
    reasons: list[str] = []
    keep_s = max(policy.scale_up_window_s, policy.scale_down_window_s)
    kept = [r for r in history if obs.ts - r.ts <= keep_s]
    if not results:
        reasons.append(f"no fresh data for {', '.join(missing)}: keeping the current count")
        return Decision(obs.ts, obs.current, obs.current, None, obs.current, [], reasons, bounds), kept
    winner = max(results, key=lambda m: m.desired)
    recommendation = min(max(winner.desired, low), high)  # remembered within bounds, like the HPA
    for metric in results:
        reasons.append(f"{metric.name}: {metric.formula}")
    if missing:
        reasons.append(f"no fresh data for {', '.join(missing)} (ignored)")
    if len(results) > 1:
        reasons.append(f"largest is {winner.name}: {winner.desired}")
    if winner.desired > high:
        reasons.append(f"capped at max {high} (bounds [{low}, {high}])")
    elif winner.desired < low:
        reasons.append(f"raised to min {low} (bounds [{low}, {high}])")
    stabilized = stabilize(obs.current, recommendation, kept, obs.ts, policy.scale_up_window_s,
                           policy.scale_down_window_s)
    if stabilized > recommendation:
        reasons.append(f"scale-down window {policy.scale_down_window_s:g}s: highest recommendation {stabilized}")
    elif stabilized < recommendation and stabilized != obs.current:
        reasons.append(f"scale-up window {policy.scale_up_window_s:g}s: lowest recommendation {stabilized}")
    elif stabilized == obs.current and recommendation < obs.current:
        reasons.append(f"scale-down window {policy.scale_down_window_s:g}s holds {obs.current}")
    desired = stabilized
    if desired > obs.current + policy.max_step_up:
        desired = obs.current + policy.max_step_up
        reasons.append(f"max_step_up {policy.max_step_up}: {desired}")
    if desired < obs.current - policy.max_step_down:
        desired = obs.current - policy.max_step_down
        reasons.append(f"max_step_down {policy.max_step_down}: {desired}")
    if desired > high:
        reasons.append(f"capped at max {high}")
        desired = high
    if desired < low:
        reasons.append(f"raised to min {low}")
        desired = low
    kept.append(Recommendation(obs.ts, recommendation))
    return Decision(obs.ts, obs.current, desired, winner.desired, stabilized, results, reasons, bounds), kept
