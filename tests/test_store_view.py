"""The dashboard pages' store is read-only at run time, not only at type level (core/store/view.py).

Fast tier: a real Store on a temporary SQLite file, behind the dashboard's read cache and the read-only view,
composed as dashboard/ui.py composes them.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import pytest

from core.samples import Sample
from core.store import ReadOnlyView, Store
from core.store.protocols import OpsRecords, RecordsReader, SeriesReader, TimeSeries
from dashboard.store_cache import CachedStore

pytestmark = pytest.mark.fast


def _methods(*protocols: type) -> set[str]:
    """The methods a protocol class itself declares (not those of its bases or of `Protocol`)."""
    return {name for proto in protocols for name, member in vars(proto).items()
            if inspect.isfunction(member) and not name.startswith("_")}


READS = _methods(SeriesReader, RecordsReader)
WRITES = _methods(TimeSeries, OpsRecords)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'view.db'}")
    now = time.time()
    store.write_samples([Sample("instance", "web/web-1", "up", 1.0, now, "bool")])
    store.add_event("action", "web", "scaled to 2")
    store.put_kv("desired:web", {"replicas": 2})
    return store


def test_the_view_has_exactly_the_read_methods() -> None:
    assert WRITES, "the write halves of the protocols declare methods"
    public = {name for name in dir(ReadOnlyView) if not name.startswith("_")}
    assert public == READS


def test_reads_pass_through_the_cache(store: Store) -> None:
    view = ReadOnlyView(CachedStore(store))
    assert [(row.series.target, row.value) for row in view.latest(source="instance", metric="up")] == [
        ("web/web-1", 1.0)
    ]
    assert [event.message for event in view.events(0, time.time() + 60, kind="action")] == ["scaled to 2"]
    assert view.get_kv("desired:web") == {"replicas": 2}
    assert [status.up for status in view.target_statuses("instance")] == [True]


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_method_fails_through_the_view(store: Store, write: str) -> None:
    view = ReadOnlyView(CachedStore(store))  # the cache alone passes unknown names through to the store
    assert callable(getattr(CachedStore(store), write))
    with pytest.raises(AttributeError):
        getattr(view, write)


def test_a_write_attempt_leaves_the_store_unchanged(store: Store) -> None:
    view = ReadOnlyView(CachedStore(store))
    with pytest.raises(AttributeError):
        view.put_kv("desired:web", {"replicas": 9})  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view.write_samples([Sample("instance", "web/web-1", "up", 0.0, time.time(), "bool")])  # type: ignore[attr-defined]
    assert store.get_kv("desired:web") == {"replicas": 2}
    assert [row.value for row in store.latest(source="instance", metric="up")] == [1.0]


def test_nothing_reaches_the_wrapped_store_or_attaches_to_the_view(store: Store) -> None:
    view = ReadOnlyView(CachedStore(store))
    for name in ("store", "_engine", "engine", "clear"):
        with pytest.raises(AttributeError):
            getattr(view, name)
    with pytest.raises(AttributeError):
        view.put_kv = store.put_kv  # type: ignore[attr-defined]
