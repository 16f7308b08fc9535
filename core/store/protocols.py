"""What each store offers, as protocols: callers depend on these, not on the SQL classes.

`TimeSeries` is the time-series store (collectors write samples; the scheduler rolls up and applies retention),
`OpsRecords` the ops-records store (the actions: events, replicas, audit, locks, facts, kv, progress), and
`StoreView` the read-only view the dashboard pages get (view.py's `ReadOnlyView` enforces it at run time over the
dashboard's CachedStore; writes go through the actions layer, never through a page).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from core.samples import Labels, Sample
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
)


class SeriesReader(Protocol):
    """The read side of the time-series store."""

    def find_series(self, source: str | None = None, target: str | None = None, metric: str | None = None,
                    like_target: str | None = None) -> list[SeriesInfo]: ...

    def latest(self, source: str | None = None, metric: str | None = None,
               target: str | None = None) -> list[Latest]: ...

    def target_statuses(self, source: str | None = None) -> list[TargetStatus]: ...

    def query(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
              rate: bool = False) -> dict[int, list[Point]]: ...

    def query_columns(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
                      rate: bool = False) -> dict[int, Columns]: ...

    def rate(self, series_id: int, start: float, end: float, max_points: int = 2000) -> list[Point]: ...


class TimeSeries(SeriesReader, Protocol):
    """Samples, rollups, retention and queries."""

    def series_id(self, source: str, target: str, metric: str, labels: Labels = (), unit: str = "") -> int: ...

    def write_samples(self, samples: Iterable[Sample]) -> int: ...

    def rollup(self, now: float | None = None) -> None: ...

    def apply_retention(self, now: float | None = None, config: Any = None) -> dict[str, int]: ...


class RecordsReader(Protocol):
    """The read side of the ops-records store."""

    def events(self, start: float, end: float, kind: str | None = None,
               target: str | None = None) -> list[Event]: ...

    def replicas(self, service: str | None = None) -> list[ReplicaRecord]: ...

    def audit(self, start: float | None = None, end: float | None = None, action: str | None = None,
              who: str | None = None, op_id: str | None = None) -> list[AuditEntry]: ...

    def locks(self) -> list[dict]: ...

    def facts(self, run_id: str | None = None, rule: str | None = None) -> list[Fact]: ...

    def get_kv(self, key: str) -> dict | None: ...

    def progress(self, op_id: str, since: float | None = None) -> list[Progress]: ...


class OpsRecords(RecordsReader, Protocol):
    """Events, the replica registry, the append-only audit log, action locks, facts and kv."""

    def add_event(self, kind: str, target: str, message: str, details: dict | None = None,
                  ts: float | None = None) -> int: ...

    def upsert_replica(self, rec: ReplicaRecord) -> None: ...

    def remove_replica(self, service: str, instance_id: str) -> bool: ...

    def append_audit(self, entry: AuditEntry) -> int: ...

    def acquire_lock(self, service: str, action: str, who: str, op_id: str, ttl_s: float,
                     now: float | None = None) -> tuple[bool, dict]: ...

    def release_lock(self, service: str, op_id: str) -> bool: ...

    def add_fact(self, f: Fact) -> int: ...

    def add_progress(self, op_id: str, target: str, message: str, details: dict | None = None,
                     ts: float | None = None) -> int: ...

    def put_kv(self, key: str, value: dict, now: float | None = None) -> None: ...

    def delete_kv(self, key: str) -> bool: ...


class StoreView(SeriesReader, RecordsReader, Protocol):
    """Read-only: what a dashboard page may do with the store."""
