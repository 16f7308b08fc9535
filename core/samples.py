"""The one data type collectors produce and the store consumes."""

from __future__ import annotations

import time
from typing import NamedTuple

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    """One measurement of one metric of one target at one time.

    `text` carries what a number cannot: the error of an `up=0` sample, a version string,
    the raw health JSON. The store keeps the latest text per series for display.
    """

    source: str  # the collector that measured it: instance, nginx, bullmq, redis, postgres, collector, alert
    target: str  # what was measured, e.g. "web/web-1", "redis:main", "bull:emails"
    metric: str  # e.g. "up", "latency_ms", "waiting"
    value: float
    ts: float  # unix seconds
    unit: str = ""
    labels: Labels = ()
    text: str | None = None


def now() -> float:
    return time.time()


def labels_of(**pairs: str) -> Labels:
    """Labels in a canonical order so the same set always names the same series."""
    return tuple(sorted((key, str(value)) for key, value in pairs.items()))
