"""Reading the time series back: bucketed points per series over any range, served from raw samples, minute or
hour rollups (whichever the step allows and retention has kept), and counters as per-second rates."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Table,
    case,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from core.store.records import (
    _HOUR,
    _MINUTE,
    _RETENTION,
    _WM_1H,
    _WM_1M,
    Columns,
    Point,
    SeriesInfo,
    _ceil_to,
    _labels_from_json,
    choose_step,
)
from core.store.schema import (
    Database,
    kv_table,
    sample_1h_table,
    sample_1m_table,
    sample_table,
    series_table,
)


class SeriesQueries(Database):
    """The read side of `TimeSeriesStore` (see timeseries.py)."""

    def find_series(
        self,
        source: str | None = None,
        target: str | None = None,
        metric: str | None = None,
        like_target: str | None = None,
    ) -> list[SeriesInfo]:
        """Series matching every given filter; `like_target` is an SQL LIKE pattern, e.g. "web/%"."""
        s = series_table.c
        stmt = select(s.id, s.source, s.target, s.metric, s.labels, s.unit).order_by(
            s.source, s.target, s.metric, s.labels
        )
        if source is not None:
            stmt = stmt.where(s.source == source)
        if target is not None:
            stmt = stmt.where(s.target == target)
        if metric is not None:
            stmt = stmt.where(s.metric == metric)
        if like_target is not None:
            stmt = stmt.where(s.target.like(like_target))
        with self._engine.connect() as conn:
            return [self._series_info(row) for row in conn.execute(stmt)]

    @staticmethod
    def _series_info(row: Any) -> SeriesInfo:
        return SeriesInfo(int(row.id), row.source, row.target, row.metric, _labels_from_json(row.labels), row.unit)

    def _coverage(self, conn: Connection) -> dict[str, float | None]:
        """Rollup watermarks and the retention cutoffs last applied: which time span each table can answer."""
        keys = [_WM_1M, _WM_1H, _RETENTION]
        found = {
            row.key: json.loads(row.value)
            for row in conn.execute(select(kv_table.c.key, kv_table.c.value).where(kv_table.c.key.in_(keys)))
        }
        cut = found.get(_RETENTION, {})
        return {
            "wm_1m": found.get(_WM_1M, {}).get("wm"),
            "wm_1h": found.get(_WM_1H, {}).get("wm"),
            "cut_raw": cut.get("sample"),
            "cut_1m": cut.get("sample_1m"),
        }

    def _spans(
        self, conn: Connection, start: float, end: float, step: int, lookback: float = 0.0
    ) -> list[tuple[Table, int, float, float]]:
        """Which table answers which part of [start - lookback, end]: (table, resolution, from, to), oldest first.

        The coarsest table the step allows serves the past (hour rollups up to their watermark, then minute rollups
        up to theirs); raw samples serve the tail nothing has rolled up yet, so charts are never empty right after
        start. Spans older than a finer table's retention fall back to the next coarser table. Rollup spans are
        [from, to) in bucket starts; the raw span is [from, end].
        """
        cov = self._coverage(conn)
        wm_1m, wm_1h = cov["wm_1m"], cov["wm_1h"]
        lo = start - lookback
        finest = 0 if step < _MINUTE else (1 if step < _HOUR else 2)  # 0 raw, 1 minute, 2 hour

        # raw: [raw_from, end]
        if finest == 0:
            raw_from = lo if cov["cut_raw"] is None else max(lo, _ceil_to(cov["cut_raw"], _MINUTE))
        else:
            raw_from = lo if wm_1m is None else max(lo, wm_1m)
        # minute rollups: [minute_from, minute_to)
        minute_to = raw_from if wm_1m is None else min(raw_from, wm_1m)
        if finest <= 1:
            minute_from = lo if cov["cut_1m"] is None else max(lo, _ceil_to(cov["cut_1m"], _HOUR))
        else:
            minute_from = lo if wm_1h is None else max(lo, wm_1h)
        minute_from = min(minute_from, minute_to)
        # hour rollups: [lo, hour_to)
        hour_to = minute_from if wm_1h is None else min(minute_from, wm_1h)

        spans: list[tuple[Table, int, float, float]] = []
        if wm_1h is not None and lo < hour_to:
            spans.append((sample_1h_table, _HOUR, lo, hour_to))
        if wm_1m is not None and minute_from < minute_to:
            spans.append((sample_1m_table, _MINUTE, minute_from, minute_to))
        spans.append((sample_table, 0, raw_from, end))
        return spans

    @staticmethod
    def _span_rows(
        table: Table, resolution: int, series_ids: Sequence[int], span_from: float, span_to: float, end: float
    ) -> Select[Any]:
        """Rows (series_id, t, n, s, mn, mx) of one span, the same shape for raw samples and rollups."""
        c = table.c
        if resolution == 0:
            return select(
                c.series_id,
                c.ts.label("t"),
                literal_column("1").label("n"),
                c.value.label("s"),
                c.value.label("mn"),
                c.value.label("mx"),
            ).where(c.series_id.in_(series_ids), c.ts >= span_from, c.ts <= end)
        return select(
            c.series_id,
            c.bucket_ts.label("t"),
            c.n.label("n"),
            c.sum.label("s"),
            c.min.label("mn"),
            c.max.label("mx"),
        ).where(
            c.series_id.in_(series_ids),
            # a bucket that straddles the range start is included (its start may be before `start`)
            c.bucket_ts >= math.floor(span_from / resolution) * resolution,
            c.bucket_ts < span_to,
            c.bucket_ts <= end,
        )

    def _parts(
        self, conn: Connection, series_ids: Sequence[int], start: float, end: float, step: int, lookback: float = 0.0
    ) -> Select[Any]:
        """All spans' rows as one UNION ALL (see `_spans`)."""
        parts = [
            self._span_rows(table, resolution, series_ids, span_from, span_to, end)
            for table, resolution, span_from, span_to in self._spans(conn, start, end, step, lookback)
        ]
        return parts[0] if len(parts) == 1 else union_all(*parts)  # type: ignore[return-value]

    def query(
        self,
        series_ids: Sequence[int],
        start: float,
        end: float,
        max_points: int = 2000,
        rate: bool = False,
    ) -> dict[int, list[Point]]:
        """Bucketed points per series in [start, end]: mean, min and max per bucket, ≤ max_points per series.

        The bucket step is a nice number ≥ (end-start)/max_points; steps of a minute or more read the rollups.
        `rate=True` turns counters into per-second rates first (see `rate()`). Charts use `query_columns`.
        """
        columns = self.query_columns(series_ids, start, end, max_points=max_points, rate=rate)
        return {sid: list(map(Point, c.ts, c.value, c.vmin, c.vmax)) for sid, c in columns.items()}

    def query_columns(
        self,
        series_ids: Sequence[int],
        start: float,
        end: float,
        max_points: int = 2000,
        rate: bool = False,
    ) -> dict[int, Columns]:
        """`query()` as four arrays of doubles per series: what charts read.

        No Python object per point: a 24 h chart of 20 series is ~6k buckets, and as ~6k `Point`s (namedtuples,
        which the cyclic GC never untracks, unlike plain tuples of floats) every such chart pushed the process
        towards a full collection of its whole heap, which in the dashboard (Streamlit, pandas, plotly loaded)
        costs 40-100 ms and landed inside whichever chart query crossed the threshold.
        """
        ids = sorted({int(i) for i in series_ids})
        if not ids or end < start:
            return {i: Columns.empty() for i in ids}
        if rate:
            return self._rate_query(ids, start, end, max_points)
        step = choose_step(start, end, max_points)
        traces: dict[int, Columns] = {i: Columns.empty() for i in ids}
        last_n: dict[int, int] = {}  # samples in each trace's last bucket, to merge a bucket split across spans
        with self._engine.connect() as conn:
            # One query per table span (usually minute rollups + the raw tail), each for all series at once.
            for table, resolution, span_from, span_to in self._spans(conn, start, end, step):
                rows = self._span_rows(table, resolution, ids, span_from, span_to, end).subquery("rows")
                if resolution == step:
                    # rollup buckets are the chart buckets: read them in primary-key order, nothing to group
                    stmt = select(rows.c.series_id, rows.c.t, rows.c.n, rows.c.s, rows.c.mn, rows.c.mx).order_by(
                        rows.c.series_id, rows.c.t
                    )
                else:
                    bucket = self._floor_to(rows.c.t, step).label("bucket")
                    stmt = (
                        select(
                            rows.c.series_id,
                            bucket,
                            func.sum(rows.c.n),
                            func.sum(rows.c.s),
                            func.min(rows.c.mn),
                            func.max(rows.c.mx),
                        )
                        .group_by(rows.c.series_id, bucket)
                        .order_by(rows.c.series_id, bucket)
                    )
                # Streamed, not .all(): a materialised result would hold one GC-tracked Row per bucket at once
                # (the same GC pressure as above); streamed, each Row is freed before the next one is built.
                for series_id, span_rows in groupby(conn.execute(stmt), key=itemgetter(0)):
                    self._extend_trace(traces[series_id], last_n, series_id, span_rows)
        return traces

    @staticmethod
    def _extend_trace(trace: Columns, last_n: dict[int, int], series_id: int, rows: Iterable[Any]) -> None:
        """Append one span's buckets (series_id, bucket, n, sum, min, max) to a trace, oldest first.

        A chart bucket may straddle two spans (minute rollups and the raw tail); its halves are merged, weighted by
        their sample counts. Hot loop: a 24 h chart of 20 series is ~29k rows, consumed one at a time (see query).
        """
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return
        ts, value, lows, highs = trace
        _sid, bucket, n, total, vmin, vmax = first
        if ts and ts[-1] == bucket:
            prev_n = last_n[series_id]
            n = prev_n + n
            value[-1] = (value[-1] * prev_n + total) / n
            lows[-1] = min(lows[-1], vmin)
            highs[-1] = max(highs[-1], vmax)
        else:
            ts.append(bucket)
            value.append(total / n)
            lows.append(vmin)
            highs.append(vmax)
        add_ts, add_value, add_low, add_high = ts.append, value.append, lows.append, highs.append
        for _sid, bucket, n, total, vmin, vmax in rows:
            add_ts(bucket)
            add_value(total / n)
            add_low(vmin)
            add_high(vmax)
        last_n[series_id] = n

    def _rate_query(self, ids: list[int], start: float, end: float, max_points: int) -> dict[int, Columns]:
        step = choose_step(start, end, max_points)
        # one bucket of look-back so the first bucket in range has a previous reading to difference against
        lookback = float(max(step, _MINUTE)) * 2
        result: dict[int, Columns] = {i: Columns.empty() for i in ids}
        with self._engine.connect() as conn:
            parts = self._parts(conn, ids, start, end, step, lookback=lookback).subquery("parts")
            # A rollup row's counter reading is its max (counters only grow between resets); a raw row's is its value.
            reading = select(parts.c.series_id, parts.c.t, parts.c.mx.label("v")).subquery("reading")
            diffs = select(
                reading.c.series_id,
                reading.c.t,
                reading.c.v,
                func.lag(reading.c.v).over(partition_by=reading.c.series_id, order_by=reading.c.t).label("pv"),
                func.lag(reading.c.t).over(partition_by=reading.c.series_id, order_by=reading.c.t).label("pt"),
            ).subquery("diffs")
            # a drop means the counter restarted from zero: the increase since the reset is the new value itself
            increase = case((diffs.c.v >= diffs.c.pv, diffs.c.v - diffs.c.pv), else_=diffs.c.v)
            dt = diffs.c.t - diffs.c.pt
            per_s = (increase / dt).label("r")
            rates = (
                select(diffs.c.series_id, diffs.c.t, increase.label("inc"), dt.label("dt"), per_s)
                .where(diffs.c.pv.is_not(None), dt > 0, diffs.c.t >= start)
                .subquery("rates")
            )
            bucket = self._floor_to(rates.c.t, step).label("bucket")
            stmt = (
                select(
                    rates.c.series_id,
                    bucket,
                    (func.sum(rates.c.inc) / func.sum(rates.c.dt)).label("avg"),
                    func.min(rates.c.r).label("vmin"),
                    func.max(rates.c.r).label("vmax"),
                )
                .group_by(rates.c.series_id, bucket)
                .order_by(rates.c.series_id, bucket)
            )
            for series_id, bucket, avg, vmin, vmax in conn.execute(stmt):  # streamed: see query_columns
                trace = result[int(series_id)]
                trace.ts.append(bucket)
                trace.value.append(avg)
                trace.vmin.append(vmin)
                trace.vmax.append(vmax)
        return result

    def rate(self, series_id: int, start: float, end: float, max_points: int = 2000) -> list[Point]:
        """Per-second rate of a counter series, bucketed like `query()`; a value drop counts as a counter reset."""
        return self.query([int(series_id)], start, end, max_points=max_points, rate=True)[int(series_id)]
