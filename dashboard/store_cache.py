"""A read-through cache in front of the Store, shared by every dashboard session of a process.

Collectors write every few seconds, yet each session reruns its live panels every 1-60 s and every viewer asks
the same questions. Chart windows end on a 5 s grid (ranges.window), so reruns and viewers inside the same
5 s slot send identical queries and get them answered once. Entries expire after a short TTL, so a panel is
never staler than one collection interval plus the TTL. Plain Python (no Streamlit) and thread-safe:
Streamlit runs sessions on several threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from core.store import Columns, Event, Latest, Point, SeriesInfo, Store, TargetStatus

T = TypeVar("T")

# `latest`/`target_statuses` feed the tiles: short, so a tile is at most this much older than the store
LIVE_TTL_S = 1.0
# series lists change only when a new target or metric appears
SERIES_TTL_S = 10.0
# bucketed history: the window moves on a 5 s grid, so an entry is only reused within its slot
HISTORY_TTL_S = 5.0
# a chart answer is up to ~1 MB of points (20 series × 400 buckets): bound the cache, and drop expired entries on
# every insert so an idle dashboard does not sit on old answers (long-lived sessions grow memory:
# docs/design-notes.md#streamlit)
MAX_ENTRIES = 128
_LONGEST_TTL_S = max(LIVE_TTL_S, SERIES_TTL_S, HISTORY_TTL_S)


class CachedStore:
    """The read methods the dashboard uses, cached; anything else is passed through to the real store."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _cached(self, key: Hashable, ttl_s: float, compute: Callable[[], T]) -> T:
        now = self._clock()
        with self._lock:
            found = self._entries.get(key)
            if found is not None and now - found[0] < ttl_s:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[1]
        # computed outside the lock: a slow query must not serialise every other session's reads
        value = compute()
        with self._lock:
            self.misses += 1
            for old_key in [k for k, (at, _) in self._entries.items() if now - at >= _LONGEST_TTL_S]:
                del self._entries[old_key]
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        return value

    def find_series(self, source: str | None = None, target: str | None = None, metric: str | None = None,
                    like_target: str | None = None) -> list[SeriesInfo]:
        key = ("find_series", source, target, metric, like_target)
        return self._cached(key, SERIES_TTL_S, lambda: self.store.find_series(source, target, metric, like_target))

    def query(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
              rate: bool = False) -> dict[int, list[Point]]:
        key = ("query", tuple(sorted(series_ids)), start, end, max_points, rate)
        return self._cached(key, HISTORY_TTL_S,
                            lambda: self.store.query(series_ids, start, end, max_points=max_points, rate=rate))

    def query_columns(self, series_ids: Sequence[int], start: float, end: float, max_points: int = 2000,
                      rate: bool = False) -> dict[int, Columns]:
        # shared between sessions: the arrays are read-only by convention (traces wrap them without a copy)
        key = ("query_columns", tuple(sorted(series_ids)), start, end, max_points, rate)
        return self._cached(key, HISTORY_TTL_S, lambda: self.store.query_columns(series_ids, start, end,
                                                                                  max_points=max_points, rate=rate))

    def latest(self, source: str | None = None, metric: str | None = None, target: str | None = None) -> list[Latest]:
        return self._cached(("latest", source, metric, target), LIVE_TTL_S,
                            lambda: self.store.latest(source=source, metric=metric, target=target))

    def target_statuses(self, source: str | None = None) -> list[TargetStatus]:
        return self._cached(("target_statuses", source), LIVE_TTL_S, lambda: self.store.target_statuses(source))

    def events(self, start: float, end: float, kind: str | None = None, target: str | None = None) -> list[Event]:
        return self._cached(("events", start, end, kind, target), LIVE_TTL_S,
                            lambda: self.store.events(start, end, kind=kind, target=target))
