"""The time-series store: series, samples, `latest` and `target_status` kept up to date on every write, per-minute
and per-hour rollups (n/sum/min/max) filled incrementally by `rollup()`, and retention.

Layout (docs/design-notes.md#store): long format `series` + `sample(series_id, ts, value)`. The queries are in
series_query.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Column,
    Table,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from core.config import StoreConfig
from core.samples import Labels, Sample
from core.store.bulk import execute_rows, positional_sql
from core.store.records import (
    _HOUR,
    _IDS_PER_STATEMENT,
    _MINUTE,
    _RETENTION,
    _ROLLUP_CHUNK_S,
    _ROLLUP_LOOKBACK_S,
    _WM_1H,
    _WM_1M,
    Latest,
    TargetStatus,
    _is_up,
    labels_json,
    metric_kind,
)
from core.store.schema import (
    latest_table,
    sample_1h_table,
    sample_1m_table,
    sample_table,
    series_table,
    target_status_table,
)
from core.store.series_query import (
    SeriesQueries,
)


class TimeSeriesStore(SeriesQueries):
    """Samples in, bucketed series out. See the module docstring."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        self._series_ids: dict[tuple[str, str, str, str], int] = {}
        self._series_lock = threading.Lock()
        self._hot_sql: tuple[str, str] | None = None
        super().__init__(url, config)

    # -- series ---------------------------------------------------------------------------------------------------

    def _series_ids_for(self, conn: Connection, keys: dict[tuple[str, str, str, str], str]) -> None:
        """Make sure every key (source, target, metric, labels_json) → unit has a series row and a cached id."""
        missing = {key: unit for key, unit in keys.items() if key not in self._series_ids}
        if not missing:
            return
        rows = [
            {"source": s, "target": t, "metric": m, "labels": lj, "unit": unit, "kind": metric_kind(m)}
            for (s, t, m, lj), unit in missing.items()
        ]
        conn.execute(
            self._insert(series_table).on_conflict_do_nothing(index_elements=["source", "target", "metric", "labels"]),
            rows,
        )
        self._refresh_series_cache(conn)

    def _refresh_series_cache(self, conn: Connection) -> None:
        s = series_table.c
        for row in conn.execute(select(s.id, s.source, s.target, s.metric, s.labels)):
            self._series_ids[(row.source, row.target, row.metric, row.labels)] = int(row.id)

    def series_id(self, source: str, target: str, metric: str, labels: Labels = (), unit: str = "") -> int:
        """The id of one series, created if needed (collectors rarely need this; write_samples does it)."""
        key = (source, target, metric, labels_json(labels))
        with self._series_lock, self._engine.begin() as conn:
            self._series_ids_for(conn, {key: unit})
            return self._series_ids[key]

    # -- writing samples ------------------------------------------------------------------------------------------

    def write_samples(self, samples: Iterable[Sample]) -> int:
        """Store a batch in one transaction; returns how many samples were accepted (NaN/inf values are dropped;
        a repeated (series, ts) is accepted but keeps the value stored first).

        Also keeps `latest` (value + text of the newest sample per series) and `target_status` (from `up`).
        """
        batch = list(samples)
        if not batch:
            return 0
        keys: dict[tuple[str, str, str, str], str] = {}
        keyed: list[tuple[tuple[str, str, str, str], Sample]] = []
        for sample in batch:
            key = (sample.source, sample.target, sample.metric, labels_json(sample.labels))
            keys.setdefault(key, sample.unit)
            keyed.append((key, sample))

        with self._series_lock:
            if any(key not in self._series_ids for key in keys):
                with self._engine.begin() as conn:
                    self._series_ids_for(conn, keys)
            ids = self._series_ids

        # (series_id, ts) is the primary key: drop repeats inside the batch here, repeats of stored rows in SQL
        rows: dict[tuple[int, float], float] = {}
        newest: dict[int, Sample] = {}
        statuses: dict[tuple[str, str], Sample] = {}
        last_ok: dict[tuple[str, str], float] = {}
        accepted = 0
        for key, sample in keyed:
            series_id = ids[key]
            ts = float(sample.ts)
            if not math.isfinite(sample.value) or not math.isfinite(ts):
                # NaN (e.g. a 0/0 ratio) is not a measurement; SQLite would store it as NULL and fail the batch
                continue
            accepted += 1
            rows.setdefault((series_id, ts), float(sample.value))
            current = newest.get(series_id)
            if current is None or ts >= current.ts:
                newest[series_id] = sample
            if sample.metric == "up":
                seen = statuses.get((sample.source, sample.target))
                if seen is None or ts >= seen.ts:
                    statuses[(sample.source, sample.target)] = sample
                if _is_up(sample.value):
                    last_ok[(sample.source, sample.target)] = max(ts, last_ok.get((sample.source, sample.target), ts))

        if not rows:
            return 0
        insert_sql, upsert_sql = self._hot_statements()
        with self._engine.begin() as conn:
            # straight to the driver, many rows per statement (core/store/bulk.py says why)
            execute_rows(conn, insert_sql, [(sid, ts, value) for (sid, ts), value in rows.items()])
            execute_rows(conn, upsert_sql, [(sid, float(s.ts), float(s.value), s.text) for sid, s in newest.items()])
            if statuses:
                self._upsert_statuses(conn, statuses, last_ok)
        return accepted

    def _hot_statements(self) -> tuple[str, str]:
        """(insert samples, upsert latest) as one-row SQL compiled once for this dialect, positional parameters in
        the order (series_id, ts, value[, text])."""
        if self._hot_sql is None:
            insert = self._insert(sample_table).on_conflict_do_nothing(index_elements=["series_id", "ts"])
            upsert = self._insert(latest_table)
            upsert = upsert.on_conflict_do_update(
                index_elements=["series_id"],
                set_={"ts": upsert.excluded.ts, "value": upsert.excluded.value, "text": upsert.excluded.text},
                # an older sample arriving late must not overwrite a newer latest value
                where=upsert.excluded.ts >= latest_table.c.ts,
            )
            self._hot_sql = (
                positional_sql(self._engine, insert, ["series_id", "ts", "value"]),
                positional_sql(self._engine, upsert, ["series_id", "ts", "value", "text"]),
            )
        return self._hot_sql

    def _upsert_statuses(
        self, conn: Connection, statuses: dict[tuple[str, str], Sample], last_ok: dict[tuple[str, str], float]
    ) -> None:
        t = target_status_table.c
        stmt = self._insert(target_status_table)
        new_ok = stmt.excluded.last_ok_ts
        newer = stmt.excluded.last_ts >= t.last_ts  # a late, older `up` must not roll the state back ...

        def if_newer(column: str) -> ColumnElement[Any]:
            return case((newer, stmt.excluded[column]), else_=t[column])

        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "target"],
            set_={
                "up": if_newer("up"),
                "last_ts": if_newer("last_ts"),
                "error": if_newer("error"),
                # ... but it still tells when the target was last fine; while down, that time is kept
                "last_ok_ts": case(
                    (t.last_ok_ts.is_(None), new_ok),
                    (new_ok.is_not(None) & (new_ok > t.last_ok_ts), new_ok),
                    else_=t.last_ok_ts,
                ),
            },
        )
        rows = []
        for (source, target), sample in statuses.items():
            up = _is_up(sample.value)
            rows.append(
                {
                    "source": source,
                    "target": target,
                    "up": up,
                    "last_ts": float(sample.ts),
                    "last_ok_ts": last_ok.get((source, target)),
                    "error": None if up else (sample.text or "down"),
                }
            )
        conn.execute(stmt, rows)

    # -- reading samples ------------------------------------------------------------------------------------------

    def latest(self, source: str | None = None, metric: str | None = None, target: str | None = None) -> list[Latest]:
        s, lt = series_table.c, latest_table.c
        stmt = (
            select(s.id, s.source, s.target, s.metric, s.labels, s.unit, lt.ts, lt.value, lt.text)
            .select_from(latest_table.join(series_table, s.id == lt.series_id))
            .order_by(s.source, s.target, s.metric, s.labels)
        )
        if source is not None:
            stmt = stmt.where(s.source == source)
        if metric is not None:
            stmt = stmt.where(s.metric == metric)
        if target is not None:
            stmt = stmt.where(s.target == target)
        with self._engine.connect() as conn:
            return [Latest(self._series_info(r), float(r.ts), float(r.value), r.text) for r in conn.execute(stmt)]

    def target_statuses(self, source: str | None = None) -> list[TargetStatus]:
        t = target_status_table.c
        stmt = select(target_status_table).order_by(t.source, t.target)
        if source is not None:
            stmt = stmt.where(t.source == source)
        with self._engine.connect() as conn:
            return [
                TargetStatus(
                    r.source,
                    r.target,
                    bool(r.up),
                    float(r.last_ts),
                    None if r.last_ok_ts is None else float(r.last_ok_ts),
                    r.error,
                )
                for r in conn.execute(stmt)
            ]

    # -- rollups and retention ------------------------------------------------------------------------------------

    def rollup(self, now: float | None = None) -> None:
        """Fill sample_1m from raw samples and sample_1h from sample_1m, for complete buckets only.

        Incremental (watermarks in kv) and idempotent (buckets are recomputed and replaced, never added to).
        """
        now = time.time() if now is None else now
        with self._engine.connect() as conn:
            cov = self._coverage(conn)
            wm_1m, wm_1h = cov["wm_1m"], cov["wm_1h"]
            if wm_1m is None:
                first = self._oldest(conn, sample_table, sample_table.c.ts)
                wm_1m = None if first is None else math.floor(first / _MINUTE) * _MINUTE
        minute_end = math.floor(now / _MINUTE) * _MINUTE
        if wm_1m is not None:
            self._rollup_range(
                sample_table, "ts", "value", sample_1m_table, _MINUTE, wm_1m - _ROLLUP_LOOKBACK_S, minute_end
            )
            self._put_value(_WM_1M, {"wm": max(minute_end, wm_1m)}, now=now)
            wm_1m = max(minute_end, wm_1m)
        if wm_1m is None:
            return
        if wm_1h is None:
            with self._engine.connect() as conn:
                first = self._oldest(conn, sample_1m_table, sample_1m_table.c.bucket_ts)
            if first is None:
                return
            wm_1h = math.floor(first / _HOUR) * _HOUR
        # only hours whose minutes are all rolled up
        hour_end = math.floor(wm_1m / _HOUR) * _HOUR
        self._rollup_range(sample_1m_table, "bucket_ts", None, sample_1h_table, _HOUR, wm_1h - _HOUR, hour_end)
        self._put_value(_WM_1H, {"wm": max(hour_end, wm_1h)}, now=now)

    @staticmethod
    def _oldest(conn: Connection, table: Table, ts: Column[Any], after: float | None = None) -> float | None:
        """min(ts) (at or after `after`) as one primary-key seek per series; a plain min(ts) would scan the whole
        (series_id, ts) table."""
        condition = table.c.series_id == series_table.c.id
        if after is not None:
            condition = condition & (ts >= after)
        per_series = select(func.min(ts)).where(condition).correlate(series_table).scalar_subquery().label("oldest")
        oldest = conn.execute(select(func.min(per_series)).select_from(series_table)).scalar()
        return None if oldest is None else float(oldest)

    def _rollup_range(
        self,
        source: Table,
        ts_column: str,
        value_column: str | None,
        dest: Table,
        step: int,
        lo: float,
        hi: float,
    ) -> None:
        lo = math.floor(lo / step) * step
        src = source.c
        ts = src[ts_column]
        all_ids = self._all_series_ids()
        chunk_start: float = lo
        while chunk_start < hi and all_ids:
            with self._engine.connect() as conn:
                # skip empty stretches (a collector that was off for weeks) instead of walking them chunk by chunk
                next_ts = self._oldest(conn, source, ts, after=chunk_start)
            if next_ts is None or next_ts >= hi:
                break
            chunk_start = max(chunk_start, math.floor(next_ts / step) * step)
            chunk_end = min(hi, chunk_start + max(_ROLLUP_CHUNK_S, step))
            bucket = self._floor_to(ts, step)
            if value_column is not None:
                value = src[value_column]
                aggregates = [func.count(), func.sum(value), func.min(value), func.max(value)]
            else:
                aggregates = [func.sum(src.n), func.sum(src.sum), func.min(src.min), func.max(src.max)]
            for first in range(0, len(all_ids), _IDS_PER_STATEMENT):
                # `series_id IN (explicit ids)` lets both databases seek the (series_id, ts) primary key per
                # series instead of scanning the whole table for a time range (Postgres turns a subquery into a
                # hash join over a sequential scan).
                ids = all_ids[first : first + _IDS_PER_STATEMENT]
                rows = (
                    select(src.series_id, bucket, *aggregates)
                    .where(src.series_id.in_(ids), ts >= chunk_start, ts < chunk_end)
                    .group_by(src.series_id, bucket)
                )
                stmt = self._insert(dest).from_select(["series_id", "bucket_ts", "n", "sum", "min", "max"], rows)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["series_id", "bucket_ts"],
                    set_={c: stmt.excluded[c] for c in ("n", "sum", "min", "max")},
                )
                with self._engine.begin() as conn:
                    conn.execute(stmt)
            chunk_start = chunk_end

    def _all_series_ids(self) -> list[int]:
        with self._engine.connect() as conn:
            return [int(i) for i in conn.execute(select(series_table.c.id).order_by(series_table.c.id)).scalars()]

    def apply_retention(self, now: float | None = None, config: StoreConfig | None = None) -> dict[str, int]:
        """Delete raw samples, minute and hour rollups older than their retention; returns rows deleted per table."""
        now = time.time() if now is None else now
        cfg = config or self.config
        cutoffs = (
            (sample_table, sample_table.c.ts, now - cfg.raw_retention_h * 3600.0),
            (sample_1m_table, sample_1m_table.c.bucket_ts, now - cfg.minute_retention_d * 86400.0),
            (sample_1h_table, sample_1h_table.c.bucket_ts, now - cfg.hour_retention_d * 86400.0),
        )
        all_ids = self._all_series_ids()
        deleted: dict[str, int] = {}
        for table, ts, cutoff in cutoffs:
            total = 0
            # a few series per transaction: the collectors keep writing while a big backlog is deleted
            for first in range(0, len(all_ids), 50):
                chunk = all_ids[first : first + 50]
                with self._engine.begin() as conn:
                    total += conn.execute(delete(table).where(table.c.series_id.in_(chunk), ts < cutoff)).rowcount
            deleted[table.name] = total
        self._put_value(_RETENTION, {table.name: cutoff for table, _ts, cutoff in cutoffs}, now=now)
        return deleted
