"""The store: two stores on one database, opened one way (`open_store(config)`).

- the time-series store (timeseries.py, series_query.py): series, samples, rollups, retention, queries;
- the ops-records store (ops.py): events, action progress, replicas, audit, locks, facts, kv.

Each has its protocol (protocols.py: `TimeSeries`, `OpsRecords`; `StoreView` is the dashboard's read-only view,
which `ReadOnlyView` (view.py) enforces at run time).
`Store` is both on one connection pool, which is what `open_store` returns: the fleet, the CLI, the collectors and
the dashboard all open it through `open_store`, so the `store.*` settings (retention) apply everywhere.
"""

from __future__ import annotations

from core.config import FleetConfig, StoreConfig
from core.store.ops import OpsStore
from core.store.protocols import OpsRecords, RecordsReader, SeriesReader, StoreView, TimeSeries
from core.store.records import (
    AuditEntry,
    Columns,
    Event,
    Fact,
    Latest,
    Point,
    Progress,
    ReplicaRecord,
    SeriesInfo,
    TargetStatus,
    _labels_json_cached,
    choose_step,
    labels_json,
    metric_kind,
    normalize_url,
)
from core.store.timeseries import TimeSeriesStore
from core.store.view import ReadOnlyView


class Store(TimeSeriesStore, OpsStore):
    """Both stores on one engine. `url`: sqlite:////abs/path.db (parent dir created), postgresql://..."""


def open_store(config: FleetConfig) -> Store:
    """The store of a fleet: its URL (a relative SQLite path resolved against the config file) and its `store`
    settings (retention)."""
    return Store(config.store_url, config.store)


__all__ = [
    "AuditEntry",
    "Columns",
    "Event",
    "Fact",
    "Latest",
    "OpsRecords",
    "OpsStore",
    "Point",
    "Progress",
    "ReadOnlyView",
    "RecordsReader",
    "ReplicaRecord",
    "SeriesInfo",
    "SeriesReader",
    "Store",
    "StoreConfig",
    "StoreView",
    "TargetStatus",
    "TimeSeries",
    "TimeSeriesStore",
    "_labels_json_cached",
    "choose_step",
    "labels_json",
    "metric_kind",
    "normalize_url",
    "open_store",
]
