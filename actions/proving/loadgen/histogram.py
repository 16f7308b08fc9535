"""A fixed-bucket, log-linear latency histogram (HdrHistogram's layout, kept tiny).

Values are integer microseconds. Below 2·SUB the bucket width is 1 µs; above, every power-of-two range is cut
into SUB equal buckets, so the relative error stays under 1/SUB (~1.6%) from 1 µs to minutes with ~1.4k buckets.
Bucket boundaries never depend on the data, so histograms from several connections, worker processes or
progress snapshots merge by adding counts — the reason not to keep raw samples or a t-digest.
"""

from __future__ import annotations

import math

SUB_BITS = 6
SUB = 1 << SUB_BITS  # linear sub-buckets per power of two
MAX_US = 600_000_000  # 10 minutes; anything slower is clamped (it would be a timeout long before)
BUCKETS = ((MAX_US.bit_length() - SUB_BITS) + 1) * SUB


def bucket_of(value_us: int) -> int:
    if value_us < SUB:
        return max(value_us, 0)
    if value_us > MAX_US:
        value_us = MAX_US
    shift = value_us.bit_length() - SUB_BITS - 1
    return ((shift + 1) << SUB_BITS) + (value_us >> shift) - SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) in microseconds of one bucket."""
    group, offset = divmod(index, SUB)
    if group == 0:
        return offset, offset + 1
    shift = group - 1
    low = (SUB + offset) << shift
    return low, low + (1 << shift)


class Histogram:
    __slots__ = ("counts", "max_us", "min_us", "sum_us", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKETS
        self.total = 0
        self.sum_us = 0
        self.min_us = 0
        self.max_us = 0

    def record_us(self, value_us: int) -> None:
        self.counts[bucket_of(value_us)] += 1
        if self.total == 0 or value_us < self.min_us:
            self.min_us = value_us
        if value_us > self.max_us:
            self.max_us = value_us
        self.total += 1
        self.sum_us += value_us

    def merge(self, other: Histogram) -> Histogram:
        """Adds `other` into this histogram (in place) and returns self."""
        if other.total == 0:
            return self
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.sum_us += other.sum_us
        return self

    def percentile_us(self, q: float) -> float:
        """The q-th percentile (0..100): midpoint of the bucket holding that rank, clamped to [min, max]."""
        if self.total == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.total - 1e-9))  # the ceil(q·n)-th smallest value
        seen = 0
        for index, count in enumerate(self.counts):
            if not count:
                continue
            seen += count
            if seen >= rank:
                low, high = bucket_bounds(index)
                middle = (low + high - 1) / 2
                return float(min(max(middle, self.min_us), self.max_us))
        return float(self.max_us)

    def minus(self, earlier: Histogram) -> Histogram:
        """What was recorded since `earlier` (a previous copy of this histogram): the interval's latencies."""
        interval = Histogram()
        interval.counts = [now - before for now, before in zip(self.counts, earlier.counts, strict=True)]
        interval.total = self.total - earlier.total
        interval.sum_us = self.sum_us - earlier.sum_us
        # min/max of the interval are unknown; the bucket bounds of the extreme buckets are close enough
        filled = [index for index, count in enumerate(interval.counts) if count]
        if filled:
            interval.min_us = bucket_bounds(filled[0])[0]
            interval.max_us = min(bucket_bounds(filled[-1])[1] - 1, self.max_us)
        return interval

    def copy(self) -> Histogram:
        return Histogram().merge(self)

    def mean_us(self) -> float:
        return self.sum_us / self.total if self.total else 0.0

    def summary_ms(self) -> dict[str, float]:
        return {
            "min": self.min_us / 1000,
            "p50": self.percentile_us(50) / 1000,
            "p90": self.percentile_us(90) / 1000,
            "p95": self.percentile_us(95) / 1000,
            "p99": self.percentile_us(99) / 1000,
            "max": self.max_us / 1000,
            "mean": self.mean_us() / 1000,
        }

    def to_dict(self) -> dict[str, object]:
        """JSON-able and compact: only the non-empty buckets (keys are bucket indexes as strings)."""
        return {
            "sub_bits": SUB_BITS,
            "total": self.total,
            "sum_us": self.sum_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
            "buckets": {str(index): count for index, count in enumerate(self.counts) if count},
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Histogram:
        if data.get("sub_bits", SUB_BITS) != SUB_BITS:
            raise ValueError(f"histogram with sub_bits={data.get('sub_bits')} cannot merge with {SUB_BITS}")
        histogram = cls()
        buckets = data.get("buckets") or {}
        assert isinstance(buckets, dict)
        for index, count in buckets.items():
            histogram.counts[int(index)] = int(count)
        histogram.total = _whole(data.get("total", 0))
        histogram.sum_us = _whole(data.get("sum_us", 0))
        histogram.min_us = _whole(data.get("min_us", 0))
        histogram.max_us = _whole(data.get("max_us", 0))
        return histogram


def _whole(value: object) -> int:
    """An int field of a serialised histogram; anything else is a corrupt document."""
    if isinstance(value, int | float | str):
        return int(value)
    raise ValueError(f"histogram field is not a number: {value!r}")
