"""The tables of both stores and the database connection they share (`Database`): one SQLAlchemy Core code path
for SQLite, the embedded default, and Postgres, used when several dashboard or collector processes share state.

Every public method of the stores opens its own short transaction, so one store may be used from APScheduler
worker threads and Streamlit script threads at the same time, and a second process may write to the same SQLite
file (WAL + busy_timeout make it wait instead of failing).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Self

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
    cast,
    create_engine,
    delete,
    event,
    func,
    inspect,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement

from core.config import StoreConfig
from core.private_paths import private_dir
from core.store.records import (
    normalize_url,
)

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
    # the hash chain (core/audit_chain.py): NULL only on rows written before the chain existed
    Column("prev_hash", String(64), nullable=True),
    Column("row_hash", String(64), nullable=True),
)

# one row (id 1): the hash of the newest audit row, so rows cut off the end of the chain show too
audit_head_table = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
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

# The step-by-step progress of running actions (actions/audit.py), keyed by operation id. Its own table, not chart
# events: a drain writes dozens of lines that no chart wants, and the live action panel reads them by op id.
progress_table = Table(
    "op_progress",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("op_id", String(64), nullable=False, index=True),
    Column("ts", Double, nullable=False),
    Column("target", String(512), nullable=False),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=False),
)

# Progress lines were written as events of this kind before they had their own table.
LEGACY_PROGRESS_EVENT = "action.progress"

kv_table = Table(
    "kv",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Double, nullable=False),
)


def _private_sqlite_file(path: Path) -> None:
    """Create the store's directory (0700) and file (0600) before SQLite does: it would use the umask (0644).

    SQLite gives its -wal and -shm files the database file's mode, so they stay private too.
    """
    private_dir(path.parent)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


class Database:
    """One engine and the schema of both stores. `url`: sqlite:////abs/path.db (parent dir created), postgresql://..."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        self.url = normalize_url(url)
        self.config = config or StoreConfig()
        self._engine = self._make_engine(self.url)
        self.dialect = self._engine.dialect.name
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
            _private_sqlite_file(Path(database).expanduser().resolve())
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
                self._add_audit_chain_columns()
                self._create_audit_guard()
                self._move_legacy_progress()
                break
            except DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _move_legacy_progress(self) -> None:
        """A database written before `op_progress` existed holds progress lines as events: move them over once, so
        the chart events need no filter."""
        e = event_table.c
        legacy = select(e.id, e.ts, e.target, e.message, e.details).where(e.kind == LEGACY_PROGRESS_EVENT)
        with self._engine.begin() as conn:
            rows = conn.execute(legacy).all()
            if not rows:
                return
            conn.execute(progress_table.insert(), [
                {"op_id": str(json.loads(row.details).get("op_id", "")), "ts": row.ts, "target": row.target,
                 "message": row.message, "details": row.details}
                for row in rows
            ])
            conn.execute(delete(event_table).where(e.kind == LEGACY_PROGRESS_EVENT))

    def _add_audit_chain_columns(self) -> None:
        """A store made before the audit hash chain gets its two columns (older rows stay unchained)."""
        with self._engine.begin() as conn:
            present = {column["name"] for column in inspect(conn).get_columns("audit")}
            for name in ("prev_hash", "row_hash"):
                if name not in present:
                    conn.exec_driver_sql(f"ALTER TABLE audit ADD COLUMN {name} VARCHAR(64)")

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

    def __enter__(self) -> Self:
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
        step_sql: ColumnElement[Any] = literal_column(str(int(step)))
        if self.dialect == "sqlite":
            return cast(column / step_sql, Integer) * step_sql
        return func.floor(column / step_sql) * step_sql


    # -- the key-value table (the ops store's kv; the time-series store keeps its watermarks there too) -----------

    def _put_value(self, key: str, value: dict, now: float | None = None) -> None:
        row = {"key": key, "value": json.dumps(value, default=str), "updated_at": time.time() if now is None else now}
        stmt = self._insert(kv_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)
