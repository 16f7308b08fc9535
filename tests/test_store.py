"""The store against real databases: SQLite files in tmp_path and the machine's Postgres (a schema per test)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.config import StoreConfig
from core.samples import Sample, labels_of
from core.store import (
    AuditEntry,
    Fact,
    Point,
    ReplicaRecord,
    Store,
    choose_step,
    labels_json,
    normalize_url,
)
from tests.support import PYTHON, REPO_ROOT, unique_name

T0 = 1_699_920_000.0  # a fixed, day-aligned epoch (UTC midnight) so bucket boundaries are predictable
assert T0 % 86400 == 0


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/dir/fleetdeck.db"
        return
    pg_dsn: str = request.getfixturevalue("pg_dsn")
    # one schema per test in the session's throwaway database: isolation without a CREATE DATABASE per test
    schema = unique_name("st")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{pg_dsn}?options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = Store(store_url)
    yield st
    st.close()


def gauge(metric: str, value: float, ts: float, target: str = "web/web-1", **kw: object) -> Sample:
    return Sample("instance", target, metric, value, ts, **kw)  # type: ignore[arg-type]


def test_url_normalization_and_step_choice() -> None:
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalize_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("sqlite:////x/y.db") == "sqlite:////x/y.db"
    assert choose_step(0, 3600, 2000) == 2
    assert choose_step(0, 86400, 2000) == 60  # a day reads minute rollups
    assert choose_step(0, 7 * 86400, 2000) == 600
    assert choose_step(0, 30 * 86400, 2000) == 1800
    assert choose_step(0, 60 * 86400, 2000) == 3600  # two months read hour rollups
    assert choose_step(0, 2000 * 86400, 500) % 86400 == 0
    assert labels_json((("b", "2"), ("a", "1"))) == labels_json((("a", "1"), ("b", "2"))) == '{"a":"1","b":"2"}'


def test_samples_latest_text_and_target_status(store: Store) -> None:
    store.write_samples(
        [
            gauge("up", 1, T0, unit="bool"),
            gauge("latency_ms", 12.5, T0, unit="ms"),
            gauge("version", 1, T0, text="1.4.2"),
            Sample(
                "postgres", "postgres:main", "connections", 3, T0, "count", labels_of(state="idle", application="a")
            ),
            Sample(
                "postgres", "postgres:main", "connections", 5, T0, "count", labels_of(state="active", application="a")
            ),
        ]
    )
    # later: the instance is down with an error; the status keeps when it was last fine
    store.write_samples(
        [gauge("up", 0, T0 + 5, unit="bool", text="connection refused"), gauge("latency_ms", 99, T0 + 5)]
    )
    # a late, older sample must not roll latest or status back
    store.write_samples([gauge("up", 1, T0 + 1, unit="bool")])
    # duplicates of stored (series, ts) and inside one batch are ignored, not fatal
    assert store.write_samples([gauge("latency_ms", 1, T0), gauge("latency_ms", 2, T0)]) == 2

    (status,) = store.target_statuses(source="instance")
    assert (status.target, status.up, status.last_ts) == ("web/web-1", False, T0 + 5)
    assert status.last_ok_ts == T0 + 1  # the late ok sample still counts as "last fine", it is newer than T0
    assert status.error == "connection refused"

    latest = {(x.series.metric, x.series.labels): x for x in store.latest(source="instance")}
    assert latest[("up", ())].value == 0 and latest[("up", ())].text == "connection refused"
    assert latest[("latency_ms", ())].value == 99 and latest[("latency_ms", ())].series.unit == "ms"
    assert latest[("version", ())].text == "1.4.2"
    conns = store.latest(source="postgres", metric="connections")
    assert {x.series.labels: x.value for x in conns} == {
        (("application", "a"), ("state", "active")): 5,
        (("application", "a"), ("state", "idle")): 3,
    }

    # recovery clears the error and moves last_ok_ts
    store.write_samples([gauge("up", 1, T0 + 10, unit="bool")])
    (status,) = store.target_statuses(source="instance")
    assert status.up and status.error is None and status.last_ok_ts == T0 + 10

    (lat,) = store.find_series(source="instance", metric="latency_ms")
    assert store.find_series(like_target="web/%", metric="latency_ms") == [lat]
    assert store.find_series(like_target="nope/%") == []
    # the duplicate writes kept the first stored value
    points = store.query([lat.id], T0, T0 + 5, max_points=100)[lat.id]
    assert [(p.ts, p.value) for p in points] == [(T0, 12.5), (T0 + 5, 99.0)]


def test_non_finite_values_are_dropped_not_fatal(store: Store) -> None:
    assert store.write_samples([]) == 0
    batch = [
        gauge("cache_hit_ratio", float("nan"), T0),
        gauge("cache_hit_ratio", 0.5, T0 + 5),
        gauge("x", float("inf"), T0),
    ]
    assert store.write_samples(batch) == 1
    assert store.write_samples([gauge("cache_hit_ratio", float("nan"), T0 + 10)]) == 0
    (latest,) = store.latest(metric="cache_hit_ratio")
    assert (latest.ts, latest.value) == (T0 + 5, 0.5)
    result = store.query([latest.series.id], T0, T0 + 10)
    assert result == {latest.series.id: [Point(T0 + 5, 0.5, 0.5, 0.5)]}


def test_query_buckets_in_sql_keeping_spikes(store: Store) -> None:
    start, end = T0, T0 + 6 * 3600
    spike_ts, dip_ts = T0 + 7777 * 1.0 - (7777 % 5), T0 + 15000
    samples = []
    for i in range(int((end - start) / 5)):
        ts = start + i * 5
        value = 999.0 if ts == spike_ts else (-5.0 if ts == dip_ts else 10.0 + (i % 3))
        samples.append(gauge("latency_ms", value, ts))
        samples.append(gauge("latency_ms", 1.0, ts, target="web/web-2"))
    store.write_samples(samples)
    a, b = (s.id for s in store.find_series(metric="latency_ms"))

    max_points = 200
    result = store.query([a, b], start, end, max_points=max_points)
    assert set(result) == {a, b}
    step = choose_step(start, end, max_points)
    for points in result.values():
        assert 0 < len(points) <= max_points
        assert all(later.ts - earlier.ts == step for earlier, later in itertools.pairwise(points))
    trace = result[a]
    assert max(p.vmax for p in trace) == 999.0 and min(p.vmin for p in trace) == -5.0
    # the bucket holding the spike: mean, min and max computed independently here
    spike_bucket = spike_ts - spike_ts % step
    in_bucket = [s.value for s in samples if s.target == "web/web-1" and spike_bucket <= s.ts < spike_bucket + step]
    (bucket,) = [p for p in trace if p.ts == spike_bucket]
    assert bucket == Point(spike_bucket, pytest.approx(sum(in_bucket) / len(in_bucket)), min(in_bucket), 999.0)
    assert all(p.value == 1.0 for p in result[b])
    # a short range is served raw: one point per sample
    short = store.query([a], start, start + 60, max_points=2000)[a]
    assert [p.ts for p in short] == [start + 5 * i for i in range(13)]
    assert store.query([], start, end) == {}


def test_rollup_serves_seven_days_and_is_idempotent(store: Store) -> None:
    days = 7
    now = T0 + days * 86400
    samples = [gauge("cpu_percent", float(i % 60), T0 + i * 60) for i in range(days * 1440)]
    samples.append(gauge("cpu_percent", 500.0, T0 + 3 * 86400 + 30))  # a spike between minute samples
    store.write_samples(samples)
    (sid,) = (s.id for s in store.find_series(metric="cpu_percent"))
    before = store.query([sid], T0, now, max_points=500)[sid]  # no rollups yet: bucketed from raw

    store.rollup(now=now)
    first = store.query([sid], T0, now, max_points=500)[sid]
    store.rollup(now=now)  # idempotent: recomputed buckets replace, never add
    store.rollup(now=now + 30)
    assert store.query([sid], T0, now, max_points=500)[sid] == first
    assert [(p.ts, p.vmin, p.vmax) for p in first] == [(p.ts, p.vmin, p.vmax) for p in before]
    assert [p.value for p in first] == pytest.approx([p.value for p in before])
    assert max(p.vmax for p in first) == 500.0

    # Prove the long range reads the rollups: drop every raw sample, the chart stays the same.
    deleted = store.apply_retention(now=now + 86400, config=StoreConfig(raw_retention_h=1))
    assert deleted["sample"] == len(samples) and deleted["sample_1m"] == 0
    assert store.query([sid], T0, now, max_points=500)[sid] == first
    # hour rollups serve month-scale ranges
    month = store.query([sid], T0, T0 + 30 * 86400, max_points=500)[sid]
    assert month and month[0].ts == T0 and max(p.vmax for p in month) == 500.0
    assert all(later.ts - earlier.ts >= 3600 for earlier, later in itertools.pairwise(month))

    # samples newer than the watermark are charted from raw right away
    store.write_samples([gauge("cpu_percent", 42.0, now + 90)])
    tail = store.query([sid], now - 86400, now + 120, max_points=2000)[sid]
    assert tail[-1].ts == now + 60 and tail[-1].value == 42.0


def test_rollup_skips_long_gaps(store: Store) -> None:
    """Samples 20 years apart: the rollup jumps the empty stretch (walking it in chunks would take minutes)."""
    old, new = T0 - 20 * 365 * 86400, T0
    store.write_samples([gauge("m", 1.0, old), gauge("m", 3.0, new)])
    (sid,) = (s.id for s in store.find_series())
    started = time.monotonic()
    store.rollup(now=new + 7200)
    assert time.monotonic() - started < 20
    keep_hours = StoreConfig(raw_retention_h=1, minute_retention_d=1, hour_retention_d=21 * 365)
    store.apply_retention(now=new + 7200, config=keep_hours)
    hours = store.query([sid], old - 3600, new + 3600, max_points=4)[sid]  # a yearly step: hour rollups
    assert [p.value for p in hours] == [1.0, 3.0]


def test_rate_handles_counter_resets(store: Store) -> None:
    # 10 requests per 5 s, the process restarts after 100 samples (counter starts over from 0)
    values = [10.0 * i for i in range(100)] + [10.0 * i for i in range(100)]
    store.write_samples([gauge("requests_total", v, T0 + 5 * i, unit="count") for i, v in enumerate(values)])
    (sid,) = (s.id for s in store.find_series(metric="requests_total"))
    points = store.rate(sid, T0, T0 + 5 * 199, max_points=2000)
    assert len(points) == 199  # raw: one rate per interval
    assert all(p.value == pytest.approx(2.0) for p in points if p.ts != T0 + 500)
    (reset,) = [p for p in points if p.ts == T0 + 500]
    assert reset.value == 0.0  # after a reset the increase is the new value itself (0), never negative
    assert min(p.vmin for p in points) >= 0
    # through the minute rollups the mean rate survives, still without negative spikes
    store.rollup(now=T0 + 5000)
    rolled = store.query([sid], T0, T0 + 5 * 199, max_points=10, rate=True)[sid]
    assert 0 < len(rolled) <= 10 and min(p.vmin for p in rolled) >= 0
    assert max(p.value for p in rolled) == pytest.approx(2.0, rel=0.1)


def test_retention_deletes_only_old_rows(store: Store) -> None:
    now = T0 + 30 * 86400
    ages_h = (0.5, 47, 49, 200, 480)  # defaults: 48 h raw, 14 d (336 h) minutes, 400 d hours
    store.write_samples([gauge("latency_ms", 1.0, now - age * 3600) for age in ages_h])
    store.rollup(now=now)
    (sid,) = (s.id for s in store.find_series())

    def visible(hours_ago_from: float, hours_ago_to: float, max_points: int) -> list[float]:
        points = store.query([sid], now - hours_ago_from * 3600, now - hours_ago_to * 3600, max_points)[sid]
        return [p.ts for p in points]

    assert len(visible(500, 0, 100_000)) == 5  # raw everything, before retention
    deleted = store.apply_retention(now=now)
    assert deleted == {"sample": 3, "sample_1m": 1, "sample_1h": 0}
    assert store.apply_retention(now=now) == {"sample": 0, "sample_1m": 0, "sample_1h": 0}
    with store._engine.connect() as conn:
        assert conn.execute(text("SELECT ts FROM sample ORDER BY ts")).scalars().all() == [
            now - 47 * 3600,
            now - 0.5 * 3600,
        ]
        assert len(conn.execute(text("SELECT bucket_ts FROM sample_1m")).all()) == 4
    # charts still show the older points, from the coarser tables that still hold them
    assert visible(500, 0, 100_000) == [now - age * 3600 for age in sorted(ages_h, reverse=True)]
    assert visible(210, 190, 100) == [now - 200 * 3600]  # minute rollups
    assert visible(490, 470, 100) == [now - 480 * 3600]  # hour rollups: the minute ones are gone


def test_events(store: Store) -> None:
    first = store.add_event("drain", "web/web-2", "draining web-2", {"op_id": "x1"}, ts=T0)
    store.add_event("annotation", "", "deploy 1.4.2", ts=T0 + 60)
    store.add_event("drain", "web/web-3", "draining web-3", ts=T0 + 120)
    events = store.events(T0, T0 + 120)
    assert [e.message for e in events] == ["draining web-2", "deploy 1.4.2", "draining web-3"]
    assert events[0].id == first and events[0].details == {"op_id": "x1"} and events[1].details == {}
    assert [e.target for e in store.events(T0, T0 + 1000, kind="drain")] == ["web/web-2", "web/web-3"]
    assert store.events(T0 + 1, T0 + 59) == []


def test_replicas_upsert_and_remove(store: Store) -> None:
    rec = ReplicaRecord("web", "web-1", "local", "127.0.0.1", 9101, 4242, "starting", T0, "4242")
    store.upsert_replica(rec)
    store.upsert_replica(ReplicaRecord("web", "web-2", "local", "127.0.0.1", 9102, None, "running", T0, "c0ffee"))
    store.upsert_replica(rec._replace(state="running"))
    assert [(r.instance_id, r.state, r.pid) for r in store.replicas("web")] == [
        ("web-1", "running", 4242),
        ("web-2", "running", None),
    ]
    assert store.replicas("worker") == []
    assert store.remove_replica("web", "web-1") is True
    assert store.remove_replica("web", "web-1") is False
    assert [r.instance_id for r in store.replicas()] == ["web-2"]


def test_audit_is_append_only_and_filterable(store: Store) -> None:
    def entry(ts: float, action: str, who: str) -> AuditEntry:
        return AuditEntry(None, ts, f"op-{ts}", who, "operator", action, {"n": 3}, {"r": 2}, {"r": 3}, "ok", None, 1.5)

    ids = [
        store.append_audit(entry(T0 + i, a, w))
        for i, (a, w) in enumerate([("scale", "ann"), ("drain", "bob"), ("scale", "bob")])
    ]
    assert len(set(ids)) == 3
    everything = store.audit()
    assert [(e.action, e.who) for e in everything] == [("scale", "ann"), ("drain", "bob"), ("scale", "bob")]
    assert everything[0] == entry(T0, "scale", "ann")._replace(id=ids[0])
    assert [e.id for e in store.audit(action="scale", who="bob")] == [ids[2]]
    assert [e.id for e in store.audit(start=T0 + 1, end=T0 + 1)] == [ids[1]]
    # no API to rewrite history, and the database refuses it too
    assert not any(hasattr(store, name) for name in ("update_audit", "delete_audit", "clear_audit"))
    for statement in ("UPDATE audit SET who = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), store._engine.begin() as conn:
            conn.execute(text(statement))
    assert len(store.audit()) == 3


def test_action_lock_busy_takeover_release(store: Store) -> None:
    ok, mine = store.acquire_lock("web", "drain", "ann", "op-1", ttl_s=30, now=T0)
    assert ok and mine["op_id"] == "op-1" and mine["expires_at"] == T0 + 30
    ok, holder = store.acquire_lock("web", "scale", "bob", "op-2", ttl_s=30, now=T0 + 10)
    assert not ok and (holder["who"], holder["action"], holder["op_id"]) == ("ann", "drain", "op-1")
    assert store.acquire_lock("worker", "scale", "bob", "op-3", ttl_s=30, now=T0 + 10)[0]  # other service: free
    # after expiry another operation takes it over; the old holder can no longer release it
    ok, holder = store.acquire_lock("web", "scale", "bob", "op-2", ttl_s=30, now=T0 + 31)
    assert ok and holder["who"] == "bob"
    assert store.release_lock("web", "op-1") is False
    assert store.release_lock("web", "op-2") is True
    assert store.acquire_lock("web", "drain", "ann", "op-4", ttl_s=30, now=T0 + 32)[0]


def test_action_lock_race_has_one_winner(store_url: str) -> None:
    stores = [Store(store_url) for _ in range(2)]  # two "processes" with their own pools
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait()
        ok, _holder = stores[n % 2].acquire_lock("web", "drain", f"user{n}", f"op-{n}", ttl_s=60)
        if ok:
            winners.append(f"op-{n}")

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for st in stores:
        st.close()
    assert len(winners) == 1


def test_kv_and_facts(store: Store) -> None:
    assert store.get_kv("leader") is None
    store.put_kv("leader", {"pid": 1})
    store.put_kv("leader", {"pid": 2, "nested": [1, 2]})
    assert store.get_kv("leader") == {"pid": 2, "nested": [1, 2]}
    assert store.delete_kv("leader") is True and store.get_kv("leader") is None
    assert store.delete_kv("leader") is False

    fact = Fact(None, "run-1", "lb_health_checks", "bronze", "web", T0, "pass", "3/3 healthy", {"urls": ["a", "b"]})
    fid = store.add_fact(fact)
    store.add_fact(fact._replace(run_id="run-2", status="fail", ts=T0 + 5))
    store.add_fact(fact._replace(rule="stateless_sessions", ts=T0 + 6))
    assert store.facts(run_id="run-1", rule="lb_health_checks") == [fact._replace(id=fid)]
    assert [f.status for f in store.facts(rule="lb_health_checks")] == ["pass", "fail"]
    assert len(store.facts()) == 3


def test_two_stores_on_one_sqlite_file_share_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    dashboard, collector = Store(url), Store(url)
    collector.write_samples([gauge("up", 1, T0, unit="bool")])
    assert [s.target for s in dashboard.target_statuses()] == ["web/web-1"]
    dashboard.add_event("annotation", "", "hello", ts=T0)
    assert [e.message for e in collector.events(T0, T0)] == ["hello"]
    # a series created by one store is found by the other, whose id cache never saw it
    collector.write_samples([gauge("latency_ms", 5, T0)])
    dashboard.write_samples([gauge("latency_ms", 6, T0 + 5)])
    (sid,) = (s.id for s in dashboard.find_series(metric="latency_ms"))
    assert [p.value for p in collector.query([sid], T0, T0 + 5)[sid]] == [5, 6]
    dashboard.close()
    collector.close()


def test_another_process_writes_while_we_write(tmp_path: Path) -> None:
    """A real second process writes to the same SQLite file at the same time: WAL + busy_timeout, no lock errors."""
    url = f"sqlite:///{tmp_path}/shared.db"
    store = Store(url)
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from core.store import Store\nfrom core.samples import Sample\n"
        "st = Store(sys.argv[1])\n"
        "for b in range(40):\n"
        "    batch = [Sample('instance', 'other/o-1', 'm', float(i), 1e9 + b * 1000 + i) for i in range(500)]\n"
        "    st.write_samples(batch)\n"
        "st.add_event('done', '', 'child finished', ts=1e9)\n"
    )
    child = subprocess.Popen([PYTHON, "-c", script, url, REPO_ROOT])
    for b in range(40):
        store.write_samples([gauge("m", float(i), 1e9 + b * 1000 + i) for i in range(500)])
        store.rollup(now=1e9 + b * 1000)
    assert child.wait(timeout=120) == 0
    assert [e.message for e in store.events(1e9, 1e9)] == ["child finished"]
    ids = [s.id for s in store.find_series(metric="m")]
    counts = {sid: len(pts) for sid, pts in store.query(ids, 1e9, 1e9 + 40_000, max_points=100_000).items()}
    assert sorted(counts.values()) == [20_000, 20_000]
    store.close()


def test_concurrent_threads_share_one_store(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for b in range(10):
                store.write_samples([gauge("m", 1.0, T0 + b * 100 + i, target=f"web/w{n}") for i in range(50)])
                store.latest(metric="m")
        except BaseException as error:  # collected so the assertion names it
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.find_series(metric="m")) == 4
    assert len(store.latest(metric="m")) == 4


def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "fd.db"
    store = Store(f"sqlite:///{db}")
    assert db.exists()
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_labels_json_is_cached_per_label_tuple() -> None:
    from core.store import _labels_json_cached

    assert labels_json(()) == "{}"
    labels = labels_of(state="idle", application="web-7")
    _labels_json_cached.cache_clear()
    for _ in range(3):
        assert labels_json(labels) == '{"application":"web-7","state":"idle"}'
    info = _labels_json_cached.cache_info()
    assert (info.misses, info.hits) == (1, 2)  # one json.dumps per distinct label set, not per sample
    # a hand-built, unhashable label set is still canonicalised (not cached)
    assert labels_json([("b", "2"), ("a", "1")]) == '{"a":"1","b":"2"}'  # type: ignore[arg-type]


def test_query_columns_match_points_and_create_no_object_per_bucket(store: Store) -> None:
    """Charts read `query_columns`: the same numbers as `query`, without one GC-tracked object per bucket (those
    used to trigger full collections of the dashboard's heap inside chart queries)."""
    import gc
    import warnings

    from sqlalchemy.exc import SADeprecationWarning

    samples = [gauge(m, (i % 7) + k, T0 + i * 5.0, target=f"web/web-{k}") for i in range(2 * 720)
               for k in range(4) for m in ("up", "latency_ms")]
    store.write_samples(samples)
    store.rollup(now=T0 + 2 * 3600 - 30)  # minute rollups plus a raw tail: exercises the merged boundary bucket
    ids = [s.id for s in store.find_series(source="instance")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SADeprecationWarning)  # SQLAlchemy 2.1 deprecations fail loudly here
        points = store.query(ids, T0, T0 + 2 * 3600, max_points=100)
        columns = store.query_columns(ids, T0, T0 + 2 * 3600, max_points=100)
        rates = store.query_columns(ids, T0, T0 + 2 * 3600, max_points=100, rate=True)
    assert set(columns) == set(points) == set(ids) and set(rates) == set(ids)
    for sid, trace in points.items():
        assert 0 < len(trace) <= 100
        assert list(zip(*columns[sid], strict=True)) == [tuple(p) for p in trace]
        assert all(isinstance(p, Point) for p in trace)

    gc.collect()
    gc.disable()  # count what the query leaves alive, not what a collection happens to sweep meanwhile
    try:
        before = len(gc.get_objects())
        # 5 s buckets: ~11.5k of them, against a constant few hundred objects of statement building per call
        kept = store.query_columns(ids, T0, T0 + 2 * 3600, max_points=2000)
        grown = len(gc.get_objects()) - before
        as_points = store.query(ids, T0, T0 + 2 * 3600, max_points=2000)
        grown_points = len(gc.get_objects()) - before - grown
    finally:
        gc.enable()
    buckets = sum(len(c.ts) for c in kept.values())
    assert buckets >= 8 * 1400
    assert grown < 1000, (grown, buckets)  # statement objects per call, not one object per bucket
    assert grown_points >= buckets == sum(map(len, as_points.values()))  # the measure sees per-point objects
