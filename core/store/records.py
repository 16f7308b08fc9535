"""The store's record types and the pure helpers around them (label canonical form, URL normalisation, the
chart bucket step)."""

from __future__ import annotations

import functools
import json
import math
from array import array
from typing import NamedTuple

from core.samples import Labels

# ---------------------------------------------------------------------------------------------------------------
# Public record types (docs/architecture.md, "Store")


class SeriesInfo(NamedTuple):
    id: int
    source: str
    target: str
    metric: str
    labels: Labels
    unit: str


class Point(NamedTuple):
    """One chart bucket: `ts` is the bucket start (aligned to the step), `value` the mean, vmin/vmax the extremes."""

    ts: float
    value: float
    vmin: float
    vmax: float


class Columns(NamedTuple):
    """Chart buckets of one series as parallel arrays of doubles, oldest first (see `Store.query_columns`).

    array('d') rather than lists of Points: no Python object per bucket, and numpy wraps them without a copy.
    """

    ts: array[float]
    value: array[float]
    vmin: array[float]
    vmax: array[float]

    @classmethod
    def empty(cls) -> Columns:
        return cls(array("d"), array("d"), array("d"), array("d"))


class Latest(NamedTuple):
    series: SeriesInfo
    ts: float
    value: float
    text: str | None


class Event(NamedTuple):
    id: int
    ts: float
    kind: str
    target: str
    message: str
    details: dict


class Progress(NamedTuple):
    """One step of a running action, as the live action panel shows it."""

    id: int
    op_id: str
    ts: float
    target: str
    message: str
    details: dict


class TargetStatus(NamedTuple):
    source: str
    target: str
    up: bool
    last_ts: float
    last_ok_ts: float | None
    error: str | None


class ReplicaRecord(NamedTuple):
    service: str
    instance_id: str
    backend: str
    host: str
    port: int
    pid: int | None
    state: str
    started_at: float
    ref: str


class AuditEntry(NamedTuple):
    id: int | None
    ts: float
    op_id: str
    who: str
    role: str
    action: str
    params: dict
    before: dict
    after: dict
    result: str
    error: str | None
    duration_s: float


class Fact(NamedTuple):
    id: int | None
    run_id: str
    rule: str
    level: str
    target: str
    ts: float
    status: str
    observed: str
    evidence: dict



# Counters are stored raw and turned into per-second rates at query time (`rate()`); this only records the kind.
_COUNTER_METRICS = frozenset(
    {
        "accepts",
        "handled",
        "xact_commit",
        "xact_rollback",
        "blks_hit",
        "blks_read",
        "deadlocks",
        "temp_bytes",
        "evicted_keys",
        "rejected_connections",
        "failed_attempts",
    }
)

# Watermarks: everything before them has been rolled up (kv keys)
_WM_1M = "store:rollup_1m"
_WM_1H = "store:rollup_1h"
_RETENTION = "store:retention"  # the cutoffs apply_retention used last: older spans are read from coarser tables
# Late samples (a slow collector, clock skew between processes) land in already rolled-up buckets; rollup
# recomputes this much before the watermark from the finer table, which is idempotent because it replaces rows.
_ROLLUP_LOOKBACK_S = 300.0
# First rollup after a long outage or an import: work in chunks so no single transaction blocks the collectors.
_ROLLUP_CHUNK_S = 6 * 3600.0
# Chart bucket steps: "nice" values so buckets line up with the 1 min / 1 h rollups and stay stable across reruns
_NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_MINUTE = 60
_IDS_PER_STATEMENT = 1000  # stays far below SQLite's bound-variable limit
_HOUR = 3600


def _ceil_to(ts: float, step: int) -> float:
    return float(math.ceil(ts / step) * step)


def _is_up(value: float) -> bool:
    return float(value) >= 0.5


# Label sets repeat on every scrape, so their canonical text is computed once per distinct tuple: json.dumps per
# sample was ~40 % of write_samples. Bounded, because a misbehaving collector could mint label values forever.
_LABELS_JSON_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=_LABELS_JSON_CACHE_SIZE)
def _labels_json_cached(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def labels_json(labels: Labels) -> str:
    """The canonical text form of a label set: same set, same string, whatever order it was given in."""
    if not labels:
        return "{}"  # most series have no labels: skip even the cache lookup
    try:
        return _labels_json_cached(labels)
    except TypeError:  # an unhashable label set (a list from a hand-written caller) still gets its text
        return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _labels_from_json(text: str) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in json.loads(text).items()))


def metric_kind(metric: str) -> str:
    return "counter" if metric.endswith("_total") or metric in _COUNTER_METRICS else "gauge"


def normalize_url(url: str) -> str:
    """Plain postgresql:// (or postgres://) URLs get the psycopg 3 driver; everything else is left alone."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def choose_step(start: float, end: float, max_points: int) -> int:
    """The smallest nice bucket step (seconds) that keeps the number of aligned buckets in [start, end] ≤ max_points.

    Aligned buckets floor(ts/step) over a range of length L number at most L/step + 2, hence the `- 2`.
    """
    span = max(end - start, 0.0)
    needed = span / max(max_points - 2, 1)
    for step in _NICE_STEPS:
        if step >= needed:
            return step
    return math.ceil(needed / 86400.0) * 86400

