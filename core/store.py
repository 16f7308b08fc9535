"""The store: time series, rollups, retention, events, replicas registry, audit log, locks, facts and kv.

One code path (SQLAlchemy Core) for SQLite, the embedded default, and Postgres, used when several dashboard or
collector processes share state. Every public method opens its own short transaction, so one `Store` may be used
from APScheduler worker threads and Streamlit script threads at the same time, and a second process may write to
the same SQLite file (WAL + busy_timeout make it wait instead of failing).

Layout (docs/design-notes.md#store): long format `series` + `sample(series_id, ts, value)`, per-minute and per-hour
rollups (n/sum/min/max) filled incrementally by `rollup()`, `latest` and `target_status` kept up to date on every
write.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from array import array
from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement, Select

from core.config import StoreConfig
from core.samples import Labels, Sample

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


# ---------------------------------------------------------------------------------------------------------------
# Schema

metadata = MetaData()

series_table = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("labels", Text, nullable=False),  # canonical JSON (sorted keys, no spaces) so equal sets compare equal
    Column("unit", String(32), nullable=False, default=""),
    Column("kind", String(16), nullable=False, default="gauge"),  # gauge | counter: counters are charted as rates
    Index("ux_series_key", "source", "target", "metric", "labels", unique=True),
)

sample_table = Table(
    "sample",
    metadata,
    Column("series_id", Integer, primary_key=True, autoincrement=False),
    Column("ts", Double, primary_key=True),
    Column("value", Double, nullable=False),
    # the primary key is the clustering key: 24 h of one series is one contiguous range read
    sqlite_with_rowid=False,
)


def _rollup_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("series_id", Integer, primary_key=True, autoincrement=False),
        Column("bucket_ts", Double, primary_key=True),
        Column("n", Integer, nullable=False),
        Column("sum", Double, nullable=False),
        Column("min", Double, nullable=False),
        Column("max", Double, nullable=False),
        sqlite_with_rowid=False,
    )


sample_1m_table = _rollup_table("sample_1m")
sample_1h_table = _rollup_table("sample_1h")

latest_table = Table(
    "latest",
    metadata,
    Column("series_id", Integer, primary_key=True, autoincrement=False),
    Column("ts", Double, nullable=False),
    Column("value", Double, nullable=False),
    Column("text", Text, nullable=True),
)

target_status_table = Table(
    "target_status",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("target", String(512), primary_key=True),
    Column("up", Boolean, nullable=False),
    Column("last_ts", Double, nullable=False),
    Column("last_ok_ts", Double, nullable=True),
    Column("error", Text, nullable=True),
)

event_table = Table(
    "event",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=False),
)

replica_table = Table(
    "replica",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("instance_id", String(128), primary_key=True),
    Column("backend", String(32), nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("state", String(32), nullable=False),
    Column("started_at", Double, nullable=False),
    Column("ref", String(255), nullable=False),
)

audit_table = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False, index=True),
    Column("op_id", String(64), nullable=False, index=True),
    Column("who", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("params", Text, nullable=False),
    Column("before", Text, nullable=False),
    Column("after", Text, nullable=False),
    Column("result", String(32), nullable=False),
    Column("error", Text, nullable=True),
    Column("duration_s", Double, nullable=False),
)

action_lock_table = Table(
    "action_lock",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("action", String(64), nullable=False),
    Column("who", String(128), nullable=False),
    Column("op_id", String(64), nullable=False),
    Column("acquired_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

fact_table = Table(
    "fact",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("rule", String(128), nullable=False, index=True),
    Column("level", String(32), nullable=False),
    Column("target", String(512), nullable=False),
    Column("ts", Double, nullable=False),
    Column("status", String(32), nullable=False),
    Column("observed", Text, nullable=False),
    Column("evidence", Text, nullable=False),
)

kv_table = Table(
    "kv",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Double, nullable=False),
)

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


class Store:
    """See the module docstring. `url`: sqlite:////abs/path.db (parent dir created), postgresql://..."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        self.url = normalize_url(url)
        self.config = config or StoreConfig()
        self._engine = self._make_engine(self.url)
        self.dialect = self._engine.dialect.name
        self._series_ids: dict[tuple[str, str, str, str], int] = {}
        self._series_lock = threading.Lock()
        self._create_schema()

    # -- engine and schema ----------------------------------------------------------------------------------------

    @staticmethod
    def _make_engine(url: str) -> Engine:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            # pre_ping: the dashboard lives for days; a restarted Postgres must not leave dead pooled connections
            return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if in_memory:
            # one shared connection, or every pool connection would see its own empty database
            engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
        else:
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: pooled connections move between APScheduler and Streamlit threads;
            # the pool hands each connection to one thread at a time.
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # busy_timeout first: switching to WAL itself needs a lock another process may hold
            cursor.execute("PRAGMA busy_timeout=30000")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer and vice versa
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL, much faster commits
            cursor.close()

        return engine

    def _create_schema(self) -> None:
        # Two processes starting together may both try CREATE TABLE; the loser retries and finds the tables.
        for attempt in range(3):
            try:
                metadata.create_all(self._engine, checkfirst=True)
                self._create_audit_guard()
                break
            except DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _create_audit_guard(self) -> None:
        """Make `audit` append-only in the database too, so not even a stray SQL statement can rewrite history."""
        with self._engine.begin() as conn:
            if self.dialect == "sqlite":
                for op in ("UPDATE", "DELETE"):
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER IF NOT EXISTS audit_no_{op.lower()} BEFORE {op} ON audit "
                        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
                    )
            elif self.dialect == "postgresql":
                conn.exec_driver_sql(
                    "CREATE OR REPLACE FUNCTION fleetdeck_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$"
                )
                exists = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only' AND tgrelid = 'audit'::regclass"
                ).first()
                if not exists:
                    conn.exec_driver_sql(
                        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                        "FOR EACH ROW EXECUTE FUNCTION fleetdeck_audit_append_only()"
                    )

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- dialect helpers ------------------------------------------------------------------------------------------

    def _insert(self, table: Table) -> Any:
        """An INSERT that supports ON CONFLICT (both dialects spell it the same in SQLAlchemy)."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    def _floor_to(self, column: ColumnElement[Any], step: int) -> ColumnElement[Any]:
        """floor(column / step) * step with `step` inlined: Postgres only matches GROUP BY expressions textually,
        and two bind parameters ($1, $2) would make them differ. SQLite may lack floor(); ts is positive, so
        truncation is floor there."""
        step_sql = literal_column(str(int(step)))
        if self.dialect == "sqlite":
            return cast(column / step_sql, Integer) * step_sql
        return func.floor(column / step_sql) * step_sql

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
        with self._engine.begin() as conn:
            conn.execute(
                self._insert(sample_table).on_conflict_do_nothing(index_elements=["series_id", "ts"]),
                [{"series_id": sid, "ts": ts, "value": value} for (sid, ts), value in rows.items()],
            )
            self._upsert_latest(conn, newest)
            if statuses:
                self._upsert_statuses(conn, statuses, last_ok)
        return accepted

    def _upsert_latest(self, conn: Connection, newest: dict[int, Sample]) -> None:
        stmt = self._insert(latest_table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["series_id"],
            set_={"ts": stmt.excluded.ts, "value": stmt.excluded.value, "text": stmt.excluded.text},
            # an older sample arriving late must not overwrite a newer latest value
            where=stmt.excluded.ts >= latest_table.c.ts,
        )
        conn.execute(
            stmt,
            [
                {"series_id": sid, "ts": float(s.ts), "value": float(s.value), "text": s.text}
                for sid, s in newest.items()
            ],
        )

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
            window = {"partition_by": reading.c.series_id, "order_by": reading.c.t}
            diffs = select(
                reading.c.series_id,
                reading.c.t,
                reading.c.v,
                func.lag(reading.c.v).over(**window).label("pv"),
                func.lag(reading.c.t).over(**window).label("pt"),
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
            self.put_kv(_WM_1M, {"wm": max(minute_end, wm_1m)}, now=now)
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
        self.put_kv(_WM_1H, {"wm": max(hour_end, wm_1h)}, now=now)

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
        chunk_start = lo
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
        self.put_kv(_RETENTION, {table.name: cutoff for table, _ts, cutoff in cutoffs}, now=now)
        return deleted

    # -- events ---------------------------------------------------------------------------------------------------

    def add_event(
        self, kind: str, target: str, message: str, details: dict | None = None, ts: float | None = None
    ) -> int:
        row = {
            "ts": time.time() if ts is None else float(ts),
            "kind": kind,
            "target": target,
            "message": message,
            "details": json.dumps(details or {}, default=str),
        }
        with self._engine.begin() as conn:
            return int(conn.execute(event_table.insert().values(row)).inserted_primary_key[0])

    def events(self, start: float, end: float, kind: str | None = None, target: str | None = None) -> list[Event]:
        e = event_table.c
        stmt = select(event_table).where(e.ts >= start, e.ts <= end).order_by(e.ts, e.id)
        if kind is not None:
            stmt = stmt.where(e.kind == kind)
        if target is not None:
            stmt = stmt.where(e.target == target)
        with self._engine.connect() as conn:
            return [
                Event(int(r.id), float(r.ts), r.kind, r.target, r.message, json.loads(r.details))
                for r in conn.execute(stmt)
            ]

    # -- replicas registry ----------------------------------------------------------------------------------------

    def upsert_replica(self, rec: ReplicaRecord) -> None:
        row = rec._asdict()
        stmt = self._insert(replica_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["service", "instance_id"],
            set_={k: stmt.excluded[k] for k in row if k not in ("service", "instance_id")},
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)

    def remove_replica(self, service: str, instance_id: str) -> bool:
        r = replica_table.c
        with self._engine.begin() as conn:
            return (
                conn.execute(delete(replica_table).where(r.service == service, r.instance_id == instance_id)).rowcount
                > 0
            )

    def replicas(self, service: str | None = None) -> list[ReplicaRecord]:
        r = replica_table.c
        stmt = select(replica_table).order_by(r.service, r.instance_id)
        if service is not None:
            stmt = stmt.where(r.service == service)
        with self._engine.connect() as conn:
            return [
                ReplicaRecord(
                    row.service,
                    row.instance_id,
                    row.backend,
                    row.host,
                    int(row.port),
                    None if row.pid is None else int(row.pid),
                    row.state,
                    float(row.started_at),
                    row.ref,
                )
                for row in conn.execute(stmt)
            ]

    # -- audit (append-only: there is deliberately no update or delete) --------------------------------------------

    def append_audit(self, entry: AuditEntry) -> int:
        row = entry._asdict()
        row.pop("id")
        for key in ("params", "before", "after"):
            row[key] = json.dumps(row[key] or {}, default=str, sort_keys=True)
        with self._engine.begin() as conn:
            return int(conn.execute(audit_table.insert().values(row)).inserted_primary_key[0])

    def audit(
        self,
        start: float | None = None,
        end: float | None = None,
        action: str | None = None,
        who: str | None = None,
        op_id: str | None = None,
    ) -> list[AuditEntry]:
        a = audit_table.c
        stmt = select(audit_table).order_by(a.ts, a.id)
        if start is not None:
            stmt = stmt.where(a.ts >= start)
        if end is not None:
            stmt = stmt.where(a.ts <= end)
        if action is not None:
            stmt = stmt.where(a.action == action)
        if who is not None:
            stmt = stmt.where(a.who == who)
        if op_id is not None:
            stmt = stmt.where(a.op_id == op_id)
        with self._engine.connect() as conn:
            return [
                AuditEntry(
                    int(r.id),
                    float(r.ts),
                    r.op_id,
                    r.who,
                    r.role,
                    r.action,
                    json.loads(r.params),
                    json.loads(r.before),
                    json.loads(r.after),
                    r.result,
                    r.error,
                    float(r.duration_s),
                )
                for r in conn.execute(stmt)
            ]

    # -- action locks ---------------------------------------------------------------------------------------------

    def acquire_lock(
        self, service: str, action: str, who: str, op_id: str, ttl_s: float, now: float | None = None
    ) -> tuple[bool, dict]:
        """Take the per-service action lock; (True, our lock) or (False, the current holder).

        One atomic statement, so two processes racing cannot both win: INSERT, and on conflict take the row over
        only when it has expired (or is already ours, which refreshes it).
        """
        now = time.time() if now is None else now
        row = {
            "service": service,
            "action": action,
            "who": who,
            "op_id": op_id,
            "acquired_at": now,
            "expires_at": now + ttl_s,
        }
        lk = action_lock_table.c
        stmt = self._insert(action_lock_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["service"],
            set_={k: stmt.excluded[k] for k in row if k != "service"},
            where=(lk.expires_at <= now) | (lk.op_id == op_id),
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)
            # read back inside the same transaction: whoever holds the row now is the winner
            holder = conn.execute(select(action_lock_table).where(lk.service == service)).mappings().one()
        holder_dict = dict(holder)
        return holder_dict["op_id"] == op_id, holder_dict

    def release_lock(self, service: str, op_id: str) -> bool:
        """Release the lock if `op_id` holds it; a lock someone else took over after expiry is left alone."""
        lk = action_lock_table.c
        with self._engine.begin() as conn:
            return conn.execute(delete(action_lock_table).where(lk.service == service, lk.op_id == op_id)).rowcount > 0

    def locks(self) -> list[dict]:
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(action_lock_table)).mappings()]

    # -- facts (scorecard results) --------------------------------------------------------------------------------

    def add_fact(self, f: Fact) -> int:
        row = f._asdict()
        row.pop("id")
        row["evidence"] = json.dumps(row["evidence"] or {}, default=str, sort_keys=True)
        with self._engine.begin() as conn:
            return int(conn.execute(fact_table.insert().values(row)).inserted_primary_key[0])

    def facts(self, run_id: str | None = None, rule: str | None = None) -> list[Fact]:
        fc = fact_table.c
        stmt = select(fact_table).order_by(fc.ts, fc.id)
        if run_id is not None:
            stmt = stmt.where(fc.run_id == run_id)
        if rule is not None:
            stmt = stmt.where(fc.rule == rule)
        with self._engine.connect() as conn:
            return [
                Fact(
                    int(r.id),
                    r.run_id,
                    r.rule,
                    r.level,
                    r.target,
                    float(r.ts),
                    r.status,
                    r.observed,
                    json.loads(r.evidence),
                )
                for r in conn.execute(stmt)
            ]

    # -- kv -------------------------------------------------------------------------------------------------------

    def put_kv(self, key: str, value: dict, now: float | None = None) -> None:
        row = {"key": key, "value": json.dumps(value, default=str), "updated_at": time.time() if now is None else now}
        stmt = self._insert(kv_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)

    def delete_kv(self, key: str) -> bool:
        """Remove `key`; False when it was not there."""
        with self._engine.begin() as conn:
            return bool(conn.execute(kv_table.delete().where(kv_table.c.key == key)).rowcount)

    def get_kv(self, key: str) -> dict | None:
        with self._engine.connect() as conn:
            value = conn.execute(select(kv_table.c.value).where(kv_table.c.key == key)).scalar()
        return None if value is None else json.loads(value)


__all__ = [
    "AuditEntry",
    "Columns",
    "Event",
    "Fact",
    "Latest",
    "Point",
    "ReplicaRecord",
    "SeriesInfo",
    "Store",
    "TargetStatus",
    "choose_step",
    "labels_json",
    "normalize_url",
]
