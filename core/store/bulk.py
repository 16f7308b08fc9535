"""Many-row statements for the time-series hot path (write_samples): precompiled per dialect, positional.

Why: SQLAlchemy's per-row parameter processing was ~60 % of a 1,000-target cycle's write, and one statement per
row (executemany) releases and retakes the GIL per row — a convoy wait of up to 5 ms each time the collector's
event loop thread is busy — which left the writer behind at 10,000 targets (bench/bench_collectors.py --scale).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

# 4,000 rows x 4 parameters stays under SQLite's limit of 32,766 (3.32+) and Postgres's 65,535; older SQLite: 999.
ROWS_PER_STATEMENT = 4000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 240


def positional_sql(engine: Engine, stmt: Any, columns: list[str]) -> str:
    """The dialect's SQL for a one-row INSERT of ``columns``, with positional placeholders in that order."""
    compiled = stmt.compile(dialect=engine.dialect, column_keys=columns)
    sql = str(compiled)
    if compiled.positional:
        if list(compiled.positiontup or []) != columns:
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for {columns}")
        return sql
    # named style (psycopg's %(name)s): positional in the order the names appear, which must be ours
    appearing = sorted(columns, key=lambda column: sql.find(f"%({column})s"))
    if appearing != columns or any(sql.count(f"%({column})s") != 1 for column in columns):
        raise RuntimeError(f"unexpected parameters in {sql!r} for {columns}")
    for column in columns:
        sql = sql.replace(f"%({column})s", "%s")
    if "%(" in sql:
        raise RuntimeError(f"named parameters left in {sql!r}")
    return sql


@functools.lru_cache(maxsize=64)
def multi_row_sql(single_row_sql: str, rows: int) -> str:
    """``INSERT ... VALUES (a, b) ON CONFLICT ...`` with ``rows`` value groups instead of one."""
    values_at = single_row_sql.index(" VALUES (") + len(" VALUES ")
    group_end = single_row_sql.index(")", values_at) + 1
    group = single_row_sql[values_at:group_end]
    return single_row_sql[:values_at] + ", ".join([group] * rows) + single_row_sql[group_end:]


def execute_rows(conn: Connection, single_row_sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Every row through as few statements as the parameter limit allows."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        conn.exec_driver_sql(multi_row_sql(single_row_sql, len(chunk)), tuple(v for row in chunk for v in row))


__all__ = ["ROWS_PER_STATEMENT", "execute_rows", "multi_row_sql", "positional_sql"]
