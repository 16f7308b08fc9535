"""The dashboard pages' store: a read-only object, not only a read-only type.

`StoreView` (protocols.py) says at type level that a page only reads. `ReadOnlyView` makes it true at run time:
it wraps any store (the dashboard wraps its shared read cache, dashboard/store_cache.py) and exposes exactly the
`StoreView` methods, nothing else — no write method, no public way back to the wrapped store — so a page that tries to
write (`add_event`, `put_kv`, `write_samples`, ...) fails with AttributeError instead of writing behind the
actions' locks and audit. Writes go through the actions layer, which gets the live store.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.store.protocols import StoreView
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


class ReadOnlyView:
    """Only the read methods of `StoreView`, each passed to the wrapped store."""

    __slots__ = ("__store",)  # no __dict__: nothing can be attached to or reached through the view

    def __init__(self, store: StoreView) -> None:
        self.__store = store

    def __repr__(self) -> str:
        return f"ReadOnlyView({type(self.__store).__name__})"

    # -- the time-series reads ------------------------------------------------------------------------------------

    def find_series(self, source: str | None = None, target: str | None = None, metric: str | None = None,
                    like_target: str | None = None) -> list[SeriesInfo]:
        return self.__store.find_series(source=source, target=target, metric=metric, like_target=like_target)

    def latest(self, source: str | None = None, metric: str | None = None,
               target: str | None = None) -> list[Latest]:
        return self.__store.latest(source=source, metric=metric, target=target)

    def target_statuses(self, source: str | None = None) -> list[TargetStatus]:
        return self.__store.target_statuses(source=source)

    def query(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
              rate: bool = False) -> dict[int, list[Point]]:
        return self.__store.query(series_ids, start, end, max_points=max_points, rate=rate)

    def query_columns(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
                      rate: bool = False) -> dict[int, Columns]:
        return self.__store.query_columns(series_ids, start, end, max_points=max_points,
                                          rate=rate)

    def rate(self, series_id: int, start: float, end: float, max_points: int = 2000) -> list[Point]:
        return self.__store.rate(series_id, start, end, max_points=max_points)

    # -- the ops-records reads ------------------------------------------------------------------------------------

    def events(self, start: float, end: float, kind: str | None = None, target: str | None = None) -> list[Event]:
        return self.__store.events(start, end, kind=kind, target=target)

    def replicas(self, service: str | None = None) -> list[ReplicaRecord]:
        return self.__store.replicas(service=service)

    def audit(self, start: float | None = None, end: float | None = None, action: str | None = None,
              who: str | None = None, op_id: str | None = None) -> list[AuditEntry]:
        return self.__store.audit(start=start, end=end, action=action, who=who, op_id=op_id)

    def locks(self) -> list[dict]:
        return self.__store.locks()

    def facts(self, run_id: str | None = None, rule: str | None = None) -> list[Fact]:
        return self.__store.facts(run_id=run_id, rule=rule)

    def get_kv(self, key: str) -> dict | None:
        return self.__store.get_kv(key)

    def progress(self, op_id: str, since: float | None = None) -> list[Progress]:
        return self.__store.progress(op_id, since=since)


__all__ = ["ReadOnlyView"]
