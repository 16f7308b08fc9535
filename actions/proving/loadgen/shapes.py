"""Load shapes: pure functions of elapsed time, in the spirit of locust's `LoadTestShape.tick()`.

A shape answers two questions for any elapsed time `t` (seconds since the load started):
- `tick(t)`: the target rate in requests per second, or None once the shape is over;
- `scheduled(t)`: how many requests should have been started by `t` (the integral of the rate).

The open-loop scheduler dispatches `floor(scheduled(t)) - already_sent` requests whenever it wakes up, so the
count sent follows the shape exactly however late the scheduler wakes (no drift from summing 1/rate intervals).
Shapes hold no clock and no state: the same `t` always gives the same answer, which keeps them unit-testable and
lets several worker processes each follow their share of one shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable


@runtime_checkable
class LoadShape(Protocol):
    @property
    def duration_s(self) -> float: ...

    def tick(self, elapsed_s: float) -> float | None:
        """Target rate (req/s) at `elapsed_s`, or None when the shape is done."""
        ...

    def scheduled(self, elapsed_s: float) -> float:
        """Requests that should have been started by `elapsed_s` (clamped to the shape's duration)."""
        ...


def _check_rate(rate: float, what: str) -> None:
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{what} must be a finite rate >= 0 req/s, got {rate!r}")


def _check_duration(duration_s: float, what: str) -> None:
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"{what} must be a finite duration > 0 s, got {duration_s!r}")


@dataclass(frozen=True)
class Constant:
    rate: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_rate(self.rate, "constant rate")
        _check_duration(self.duration_s, "constant duration")

    def tick(self, elapsed_s: float) -> float | None:
        return self.rate if 0 <= elapsed_s < self.duration_s else None

    def scheduled(self, elapsed_s: float) -> float:
        return self.rate * min(max(elapsed_s, 0.0), self.duration_s)


@dataclass(frozen=True)
class Ramp:
    """Rate moves linearly from `start_rate` to `end_rate` over `duration_s` (up or down)."""

    start_rate: float
    end_rate: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_rate(self.start_rate, "ramp start rate")
        _check_rate(self.end_rate, "ramp end rate")
        _check_duration(self.duration_s, "ramp duration")

    def tick(self, elapsed_s: float) -> float | None:
        if not 0 <= elapsed_s < self.duration_s:
            return None
        return self.start_rate + (self.end_rate - self.start_rate) * elapsed_s / self.duration_s

    def scheduled(self, elapsed_s: float) -> float:
        t = min(max(elapsed_s, 0.0), self.duration_s)
        slope = (self.end_rate - self.start_rate) / self.duration_s
        return self.start_rate * t + 0.5 * slope * t * t


class Step(NamedTuple):
    duration_s: float
    rate: float


@dataclass(frozen=True)
class Steps:
    """Piecewise-constant rate: each step holds its rate for its duration (the scaling test's staircase)."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("steps needs at least one (duration_s, rate) step")
        for index, step in enumerate(self.steps):
            _check_duration(step.duration_s, f"step {index} duration")
            _check_rate(step.rate, f"step {index} rate")

    @classmethod
    def staircase(cls, first_rate: float, increment: float, count: int, step_duration_s: float) -> Steps:
        """`count` steps of `step_duration_s`, starting at `first_rate` and adding `increment` each step."""
        if count < 1:
            raise ValueError(f"staircase needs count >= 1, got {count}")
        return cls(tuple(Step(step_duration_s, first_rate + increment * i) for i in range(count)))

    @property
    def duration_s(self) -> float:
        return sum(step.duration_s for step in self.steps)

    def step_index(self, elapsed_s: float) -> int | None:
        """Which step `elapsed_s` falls in, or None outside the shape."""
        if elapsed_s < 0:
            return None
        start = 0.0
        for index, step in enumerate(self.steps):
            if elapsed_s < start + step.duration_s:
                return index
            start += step.duration_s
        return None

    def tick(self, elapsed_s: float) -> float | None:
        index = self.step_index(elapsed_s)
        return None if index is None else self.steps[index].rate

    def scheduled(self, elapsed_s: float) -> float:
        remaining = max(elapsed_s, 0.0)
        total = 0.0
        for step in self.steps:
            part = min(remaining, step.duration_s)
            total += part * step.rate
            remaining -= part
            if remaining <= 0:
                break
        return total


def parse_shape(spec: str) -> LoadShape:
    """A shape from a CLI string.

    `constant:RATE:SECONDS`, `ramp:FROM:TO:SECONDS`, `steps:RATE@SECONDS,RATE@SECONDS,...`
    """
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind == "constant" and len(parts) == 2:
            return Constant(float(parts[0]), float(parts[1]))
        if kind == "ramp" and len(parts) == 3:
            return Ramp(float(parts[0]), float(parts[1]), float(parts[2]))
        if kind == "steps" and len(parts) == 1:
            steps = []
            for item in parts[0].split(","):
                rate, _, seconds = item.partition("@")
                steps.append(Step(float(seconds), float(rate)))
            return Steps(tuple(steps))
    except ValueError as error:
        raise ValueError(f"load shape {spec!r}: {error}") from None
    raise ValueError(
        f"load shape {spec!r} not understood; use constant:RATE:SECONDS, ramp:FROM:TO:SECONDS"
        " or steps:RATE@SECONDS,RATE@SECONDS,..."
    )
