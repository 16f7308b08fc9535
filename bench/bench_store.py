"""Store benchmark (prints numbers; not a test).

    PYTHONPATH=. .venv/bin/python bench/bench_store.py [--url sqlite:////tmp/x.db | postgresql://127.0.0.1/db]
        [--series 20]

Measures the batched insert rate, then the chart query the dashboard issues: 24 h of 5 s samples for 20 series,
bucketed to ≤ 2000 points, first from raw samples only (right after start, before any rollup), then after
rollup() (minute rollups + raw tail). Goal from the dashboard issue: ≤ 50 ms per chart query.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from core.samples import Sample
from core.store import Store

DAY = 86400
INTERVAL = 5.0


def timed_ms(fn: object, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):7.1f} ms   min {min(times):7.1f} ms   max {max(times):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="store URL (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--batch", type=int, default=10_000, help="samples per write_samples call")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="fdbench")
        url = f"sqlite:///{tmp.name}/bench.db"
    store = Store(url)
    now = float(int(time.time()) // 60 * 60)
    start = now - args.hours * 3600
    steps = int(args.hours * 3600 / INTERVAL)
    total = steps * args.series
    print(f"store: {store.dialect}  {args.series} series × {steps} samples ({args.hours:g} h at {INTERVAL:g} s)")

    def batches() -> list[list[Sample]]:
        out: list[list[Sample]] = []
        current: list[Sample] = []
        for i in range(steps):
            ts = start + i * INTERVAL
            for s in range(args.series):
                value = 50.0 + (i * 7 + s * 13) % 40 + (500.0 if i % 4000 == 17 else 0.0)
                current.append(Sample("instance", f"web/web-{s}", "latency_ms", value, ts, "ms"))
                if len(current) >= args.batch:
                    out.append(current)
                    current = []
        if current:
            out.append(current)
        return out

    prepared = batches()  # built up front so the rate below is the store's, not the generator's
    started = time.perf_counter()
    for batch in prepared:
        store.write_samples(batch)
    elapsed = time.perf_counter() - started
    print(f"insert: {total} samples in {elapsed:.2f} s = {total / elapsed:,.0f} samples/s (batches of {args.batch})")

    # a collector tick: one small batch of ~100 samples with the series cache warm
    tick = [s._replace(ts=now + 1) for s in prepared[-1][:100]]
    print(f"collector tick (100 samples): {summary(timed_ms(lambda: store.write_samples(tick), args.repeat))}")

    ids = [s.id for s in store.find_series(metric="latency_ms")]
    one = ids[:1]

    def chart(series: list[int]) -> None:
        result = store.query(series, start, now, max_points=2000)
        assert all(0 < len(points) <= 2000 for points in result.values())

    def report(label: str, fn: object) -> None:
        print(f"{label:<40} {summary(timed_ms(fn, args.repeat))}")

    span = f"{args.hours:g} h"
    report(f"query 1 series {span}, raw only", lambda: chart(one))
    report(f"query {len(ids)} series {span}, raw only", lambda: chart(ids))

    started = time.perf_counter()
    store.rollup(now=now)
    print(f"first rollup of {total} samples: {(time.perf_counter() - started) * 1000:.0f} ms")
    started = time.perf_counter()
    store.rollup(now=now + 60)
    print(f"incremental rollup (next minute): {(time.perf_counter() - started) * 1000:.0f} ms")

    report(f"query 1 series {span}, rolled up", lambda: chart(one))
    report(f"query {len(ids)} series {span}, rolled up", lambda: chart(ids))
    # what the dashboard's charts call: the same buckets as arrays, no Point object per bucket
    report(f"query_columns {len(ids)} series {span}, rolled up", lambda: store.query_columns(ids, start, now, 2000))
    report(f"query {len(ids)} series last 1 h (raw)", lambda: store.query(ids, now - 3600, now, max_points=2000))
    report(f"rate {len(ids)} series {span}, rolled up", lambda: store.query(ids, start, now, 2000, rate=True))
    report("rate 1 series last 1 h (raw)", lambda: store.rate(ids[0], now - 3600, now))
    report("latest (all series)", lambda: store.latest(source="instance"))

    started = time.perf_counter()
    store.apply_retention(now=now)
    print(f"apply_retention (nothing to delete): {(time.perf_counter() - started) * 1000:.0f} ms")
    store.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
