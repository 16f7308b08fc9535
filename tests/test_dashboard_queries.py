"""Data shaping behind the pages, against a real SQLite store: staleness, rates, sums, labelled series."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions import audit
from actions.auth import Principal
from core.samples import Sample, labels_of
from core.store import Store
from dashboard import datastore_queries, queries, ranges, sample_data
from dashboard.sample_data import FleetShape

pytestmark = pytest.mark.fast  # no services: the fast tier

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    db = tmp_path_factory.mktemp("queries") / "q.db"
    store = Store(f"sqlite:///{db}")
    sample_data.seed(store, FleetShape(span_s=1800, step_s=10), NOW)
    # a replica scaled away 5+ minutes before the others stopped being scraped
    store.write_samples([Sample("instance", "web/web-9", "up", 1, NOW - 310, "bool"),
                         Sample("instance", "web/web-9", "latency_ms", 9, NOW - 310, "ms")])
    yield store
    store.close()


def test_scaled_away_replica_is_stale_not_up(store: Store) -> None:
    tiles = {t.label: t for t in queries.overview_tiles(store, stale_after_s=30)}
    assert tiles["Instances"].value == "3 / 3 up"
    table = queries.instances_table(store, NOW, ranges.window("1 h", NOW), stale_after_s=30)
    assert table.iloc[0]["instance"] == "web/web-9" and table.iloc[0]["status"] == "STALE"
    assert list(table["status"][1:]) == ["UP", "UP", "UP"]
    assert table.iloc[0]["last_scraped_s"] == pytest.approx(310)
    # out of the window entirely: not listed at all
    assert "web/web-9" not in set(queries.instances_table(store, NOW, ranges.window("5 min", NOW), 30)["instance"])


def test_stalled_collector_keeps_the_last_picture(store: Store) -> None:
    """Ten minutes after the last scrape the tiles still show the last values (the page warns it is stalled)."""
    later = NOW + 600
    tiles = {t.label: t.value for t in queries.overview_tiles(store, stale_after_s=30)}
    assert tiles["Instances"] == "3 / 3 up" and tiles["Queue backlog"] == "11"
    assert set(queries.instances_table(store, later, ranges.window("1 h", later), 30)["status"]) <= {"UP", "STALE"}
    assert queries.source_newest_ts(store, "instance") == NOW


def test_counter_rates_come_from_the_store(store: Store) -> None:
    window = ranges.window("15 min", NOW)
    charts = {c.title: c for c in datastore_queries.postgres_charts(store, window, "postgres:main")}
    commits, rollbacks = charts["Commits and rollbacks"].traces
    assert commits.name == "commits/s" and commits.value[-1] == pytest.approx(50)
    assert rollbacks.value[-1] == pytest.approx(0.5)
    detail = queries.instance_detail(store, "web/web-3", window)
    requests = next(c for c in detail.charts if c.title == "Requests")
    assert requests.traces[0].value[-1] == pytest.approx(30)  # 10 × index 3 per second
    assert detail.health_json["instanceId"] == "web-3" and detail.error is None


def test_overview_sums_across_instances_on_one_grid(store: Store) -> None:
    charts = {c.title: c for c in queries.overview_charts(store, ranges.window("15 min", NOW))}
    up = charts["Instances up"].traces[0]
    assert up.value[-1] == 3.0 and up.value.min() == 3.0
    assert list(up.value).count(4.0) == 1  # web-9's single scrape lands in one grid cell
    assert charts["Postgres connections"].reference_lines == {"budget": 60}
    assert [t.name for t in charts["p95 latency per upstream server"].traces] == [
        "nginx:web/127.0.0.1:9101", "nginx:web/127.0.0.1:9102", "nginx:web/127.0.0.1:9103"]
    assert all(len(t) <= queries.CHART_POINTS for c in charts.values() for t in c.traces)


def test_vanished_label_sets_are_dropped(store: Store) -> None:
    """An application that disconnected keeps its last `connections` row; only the newest scrape counts."""
    store.write_samples([Sample("postgres", "postgres:main", "connections", 4, NOW - 600, "count",
                                labels_of(state="idle", application="gone"))])
    view = datastore_queries.postgres_view(store, "postgres:main")
    assert "gone" not in set(view.by_application["application"])
    assert sum(view.by_state.values()) == 14


def test_unreachable_lists_only_failing_targets(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'u.db'}")
    now = time.time()
    sample_data.seed(store, FleetShape(span_s=120, step_s=10, unreachable=("redis",), events=False), now)
    down = queries.unreachable(store, "redis")
    assert [(s.target, s.error) for s in down] == [("redis:main", sample_data.UNREACHABLE_ERROR)]
    assert down[0].last_ok_ts == pytest.approx(now - 30)
    assert queries.unreachable(store, "postgres") == []
    store.close()


def test_chart_events_skip_action_progress(tmp_path: Path) -> None:
    """Progress lines are kept apart from chart events: written by an action, they never reach a chart, and a
    database from before that split has its progress events moved out when it is opened."""
    path = tmp_path / "e.db"
    store = Store(f"sqlite:///{path}")
    store.add_event("action.progress", "web", "an old progress line", {"op_id": "old1"}, ts=NOW - 80)
    store.close()
    store = Store(f"sqlite:///{path}")  # reopening moves the legacy progress event to the progress records
    store.add_event("action", "web", "drain web/web-2 by admin: ok", ts=NOW - 60)
    operation = audit.Operation(store, "op1", Principal("admin", "admin", "cli"), "drain", "web", "web/web-2", {})
    operation.progress("waiting for in-flight requests", "waiting")
    store.add_event("replica.dead", "web/web-2", "process is gone", ts=NOW - 30)
    kinds = [e.kind for e in queries.events_in(store, ranges.window("5 min", NOW))]
    assert sorted(kinds) == ["action", "replica.dead"]
    assert [line["message"] for line in audit.progress_events(store, "op1")] == ["waiting for in-flight requests"]
    assert [line.message for line in store.progress("old1", since=0)] == ["an old progress line"]
    store.close()
