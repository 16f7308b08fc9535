"""The firewall between collectors and everything else: a collection never raises and never hangs.

Like Telegraf's ``Gather(acc)`` (errors go to the accumulator, the agent keeps going) and Datadog's
``AgentCheck.run()`` (every exception becomes a reported check error), :meth:`Runner.run` turns any exception
or timeout of ``collector.collect(target)`` into an ``up=0`` sample whose text is the error, followed by
``latency_ms``, and always appends the self-metrics of source ``collector`` for ``<collector>/<target>``:
``duration_ms``, ``errors_total`` (monotonic per process) and ``last_success_ts`` (once there was a success).

Self-metrics are written when they say something new — the first run, an error, a recovery — or once every
``SELF_METRICS_EVERY_S`` per target, not every cycle: at 1,000 targets they were 3,000 of ~18,500 rows a cycle,
and the cycle's wall time is already in ``latency_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from collectors.base import LATENCY, UP, Collector, MetricRegistry, MetricSpec, T, TargetGone, error_text
from core.samples import Sample

log = logging.getLogger(__name__)

SELF_REGISTRY = MetricRegistry(
    "collector",
    [
        MetricSpec("duration_ms", "ms", "wall time of one collect(target), timeouts included"),
        MetricSpec("errors_total", "count", "failed collections of this target since the process started"),
        MetricSpec("last_success_ts", "s", "unix time of the last successful collection"),
        MetricSpec("cycles_total", "count", "scheduled runs of a collector's jobs (target scheduler/<collector>)"),
        MetricSpec("cycles_skipped_total", "count", "runs skipped: the previous run of that target still going"),
        MetricSpec("cycles_late_total", "count", "runs that started later than allowed after their scheduled time"),
        MetricSpec("schedule_lag_max_ms", "ms", "worst start delay since the previous report"),
    ],
)
SELF_METRICS_EVERY_S = 60.0
_FIRST = {UP.name: 0, LATENCY.name: 1}


class Runner:
    """Runs collections with a timeout and keeps the per-target self-metric state."""

    def __init__(self, timeout_s: float = 4.0) -> None:
        self.timeout_s = timeout_s
        self.errors_total: dict[tuple[str, str], int] = {}
        self.last_success: dict[tuple[str, str], float] = {}
        # per (collector, target): (monotonic time of the last report, errors_total then, success then)
        self._reported: dict[tuple[str, str], tuple[float, int, bool]] = {}

    async def run(self, collector: Collector[T], target: T, timeout_s: float | None = None) -> list[Sample]:
        """Collect one target; never raises (except the caller's own cancellation), never exceeds the timeout."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        started_ts = time.time()
        started = time.perf_counter()
        key = target.key
        error: str | None = None
        samples: list[Sample] = []
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                samples = await collector.collect(target)
        except TargetGone:
            return []  # removed on purpose since the last target refresh: no data, not an outage
        except TimeoutError as exc:
            # ours, or the collector's own (e.g. the HTTP client's socket timeout, whose text is more precise)
            error = f"timeout after {limit:g}s" if deadline.expired() else error_text(exc)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller cancelled us: let it
            error = "cancelled"
        except Exception as exc:  # the firewall: any failure of a collector becomes data
            error = error_text(exc)
        duration_ms = (time.perf_counter() - started) * 1000.0
        if error is None and not samples:
            error = "collector returned no samples"
        registry: MetricRegistry = collector.registry
        if error is not None:
            samples = [
                registry.sample(key, UP.name, 0, started_ts, text=error),
                registry.sample(key, LATENCY.name, duration_ms, started_ts),
            ]
        else:
            samples = _up_first(samples, key)
        return samples + self._self_metrics(collector.name, key, error, duration_ms, started_ts)

    async def run_many(self, collector: Collector[T], targets: Sequence[T],
                       timeout_s: float | None = None) -> list[Sample]:
        """All targets concurrently, each with its own timeout: a slow one never delays the others' results."""
        results = await asyncio.gather(*(self.run(collector, target, timeout_s) for target in targets))
        return [sample for batch in results for sample in batch]

    def _self_metrics(self, name: str, key: str, error: str | None, duration_ms: float, ts: float) -> list[Sample]:
        state_key = (name, key)
        errors = self.errors_total.get(state_key, 0) + (1 if error is not None else 0)
        self.errors_total[state_key] = errors
        if error is None:
            self.last_success[state_key] = ts
        now = time.monotonic()
        reported = self._reported.get(state_key)
        if (
            reported is not None
            and reported[1] == errors
            and reported[2] == (error is None)
            and now - reported[0] < SELF_METRICS_EVERY_S
        ):
            return []
        self._reported[state_key] = (now, errors, error is None)
        subject = f"{name}/{key}"
        out = [
            SELF_REGISTRY.sample(subject, "duration_ms", duration_ms, ts),
            SELF_REGISTRY.sample(subject, "errors_total", errors, ts),
        ]
        if state_key in self.last_success:
            out.append(SELF_REGISTRY.sample(subject, "last_success_ts", self.last_success[state_key], ts))
        return out


def _up_first(samples: list[Sample], key: str) -> list[Sample]:
    """Keep the contract "up and latency_ms first" even if a collector appended them late."""
    if len(samples) >= 2 and samples[0].metric == UP.name and samples[1].metric == LATENCY.name:
        return samples
    head = sorted(
        (s for s in samples if s.target == key and s.metric in _FIRST),
        key=lambda s: _FIRST[s.metric],
    )
    rest = [s for s in samples if not (s.target == key and s.metric in _FIRST)]
    return head + rest


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion in a fresh loop (CLI helpers)."""
    return asyncio.run(coro)


__all__ = ["SELF_METRICS_EVERY_S", "SELF_REGISTRY", "Runner", "run_sync"]
