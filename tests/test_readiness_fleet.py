"""The readiness suite against real fleets: sample-app replicas behind the managed nginx, on the test's own
Postgres database and Redis prefix. The well-behaved fleet passes Bronze (and the Silver/Gold checks that can be
measured here); the `--misbehave` fleet — in-memory sessions, local-disk uploads — fails exactly the two rules it
should, which proves the checks can fail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from actions.auth import PermissionDenied, Principal
from actions.backends.base import LIVE_STATES
from actions.backends.local import LocalOrchestrator
from actions.proving.readiness import ReadinessOptions, run_readiness, worker_names
from core.config import FleetConfig, parse_config
from core.samples import Sample
from core.store import Store
from tests.support import free_port, free_port_block, unique_name
from tests.support_load import SAMPLE_APPS, action_fleet_config, running_fleet

TESTER = Principal("readiness-tester", "operator", "cli")
BRONZE = {"lb_health_checks", "stateless_sessions", "no_local_disk_uploads"}


def _fleet(base: Path, pg_dsn: str, redis_url: str, prefix: str, replicas: int, misbehave: bool,
           queues: str, app: str = "python") -> FleetConfig:
    data = action_fleet_config(str(base), pg_dsn, redis_url, prefix, free_port_block(10), free_port(),
                               replicas=replicas, app=app)
    # a store of its own: two fleets on one store would adopt each other's `web` replicas
    data["store"] = {"url": f"sqlite:///{base}/store.db"}
    service = data["services"][0]  # type: ignore[index]
    service["env"].update({"QUEUES": queues, "WORKER_METRICS_POINTS": "0"})
    if misbehave:
        service["command"] += " --misbehave"
    return parse_config(data, "test", base)


@pytest.fixture(scope="module", params=SAMPLE_APPS)
def good_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_dsn: str,
               redis_url: str) -> Iterator[FleetConfig]:
    prefix = unique_name("fdt")
    try:
        with running_fleet(_fleet(tmp_path_factory.mktemp(f"ready_good_{request.param}"), pg_dsn, redis_url, prefix,
                                  3, False, "emails", app=request.param)) as config:
            yield config
    finally:
        _delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def bad_fleet(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, redis_url: str) -> Iterator[FleetConfig]:
    prefix = unique_name("fdt")
    try:
        with running_fleet(_fleet(tmp_path_factory.mktemp("ready_bad"), pg_dsn, redis_url, prefix, 2, True,
                                  "")) as config:
            yield config
    finally:
        _delete_prefix(redis_url, prefix)


def _delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


def _live(config: FleetConfig, store: Store) -> list[str]:
    service = config.service("web")
    return sorted(r.instance_id for r in LocalOrchestrator(config, store).list(service) if r.state in LIVE_STATES)


def test_well_behaved_fleet_passes_bronze(good_fleet: FleetConfig) -> None:
    store = Store(good_fleet.store_url)
    report = run_readiness(good_fleet, store, TESTER, "bronze")
    by_rule = {f.rule: f for f in report.facts}
    assert set(by_rule) == BRONZE
    for fact in report.facts:
        assert fact.status == "pass", f"{fact.rule}: {fact.observed} {fact.evidence}"
    assert report.passed
    assert report.scorecard.level == "Bronze"
    assert by_rule["stateless_sessions"].evidence["me_per_instance"] == {i: "HTTP 200" for i in _live(good_fleet,
                                                                                                        store)}
    assert len(by_rule["lb_health_checks"].evidence["servers"]) == 3
    # every fact is in the store under the run id, with its evidence
    stored = store.facts(run_id=report.run_id)
    assert {f.rule for f in stored} == BRONZE
    assert all(f.evidence for f in stored)


def test_misbehaving_fleet_fails_exactly_sessions_and_uploads(bad_fleet: FleetConfig) -> None:
    store = Store(bad_fleet.store_url)
    report = run_readiness(bad_fleet, store, TESTER, "bronze")
    statuses = {f.rule: f.status for f in report.facts}
    assert statuses == {"lb_health_checks": "pass", "stateless_sessions": "fail", "no_local_disk_uploads": "fail"}, [
        (f.rule, f.observed) for f in report.facts]
    sessions = next(f for f in report.facts if f.rule == "stateless_sessions")
    # the cookie works only on the instance that created the session
    assert sorted(sessions.evidence["me_per_instance"].values()) == ["HTTP 200", "HTTP 401"]
    uploads = next(f for f in report.facts if f.rule == "no_local_disk_uploads")
    assert list(uploads.evidence["read_back"].values()) == ["HTTP 404"]
    assert not report.passed
    assert report.scorecard.level is None


def test_silver_and_gold_checks_on_the_live_fleet(good_fleet: FleetConfig) -> None:
    """Queue workers with a canary job through an instance restart, DB pool headroom, a drain under load."""
    store = Store(good_fleet.store_url)
    before = _live(good_fleet, store)
    report = run_readiness(good_fleet, store, TESTER,
                           "distributed_queue_workers,db_pool_headroom,zero_downtime_drain")
    by_rule = {f.rule: f for f in report.facts}
    queue = by_rule["distributed_queue_workers"]
    assert queue.status == "pass", f"{queue.observed} {queue.evidence}"
    assert len(queue.evidence["workers"]["emails"]) == 3
    assert queue.evidence["canary"]["restarted"] in before
    assert set(queue.evidence["canary"]["states"].values()) == {"completed"}
    pool = by_rule["db_pool_headroom"]
    assert pool.status == "pass", f"{pool.observed} {pool.evidence}"
    assert pool.evidence["pool_max_per_instance"] == 2  # POOL_MAX of the test fleet, as reported by /health
    assert pool.evidence["budget"] < pool.evidence["max_connections"]
    drain = by_rule["zero_downtime_drain"]
    assert drain.status == "pass", f"{drain.observed} {drain.evidence}"
    assert drain.evidence["requests"] > 20
    assert len(_live(good_fleet, store)) == 3, "the suite must leave the fleet as it found it"


def test_observability_uses_stored_scrapes_and_can_fail(good_fleet: FleetConfig) -> None:
    store = Store(good_fleet.store_url)
    options = ReadinessOptions(scrape_window_s=300)
    first = run_readiness(good_fleet, store, TESTER, "observability", options).facts[0]
    # endpoints answer, but no collector ran: not a pass without scrape history
    assert first.status == "warn", first.observed
    now = time.time()
    targets = [f"web/{i}" for i in _live(good_fleet, store)]
    # 19 good scrapes and 1 failed one per target: 95% < 99% → fail
    store.write_samples([Sample("instance", t, "up", 0.0 if k == 0 else 1.0, now - 100 + k, "bool")
                         for t in targets for k in range(20)])
    second = run_readiness(good_fleet, store, TESTER, "observability", options).facts[0]
    assert second.status == "fail", second.observed
    assert second.evidence["scrape_success"] == pytest.approx(0.95, abs=0.001)


def test_viewer_may_not_run_the_suite(good_fleet: FleetConfig) -> None:
    with pytest.raises(PermissionDenied):
        run_readiness(good_fleet, Store(good_fleet.store_url), Principal("v", "viewer", "cli"), "bronze")


def test_worker_names_parses_python_and_node_forms() -> None:
    import base64

    clients = [{"name": "bull:emails:w:web-1"}, {"name": "bull:emails:w:web-1"}, {"name": "bull:emails"},
               {"name": f"bull:{base64.b64encode(b'emails').decode()}:w:node-1"}, {"name": "other:emails:w:x"},
               {"name": "bull:reports:w:web-2"}]
    assert worker_names(clients, "bull", ["emails"]) == {"emails": {"web-1", "node-1"}}
    assert worker_names(clients, "bull", None)["reports"] == {"web-2"}


def test_n_plus_one_capacity_against_a_measured_saturation_point(good_fleet: FleetConfig) -> None:
    store = Store(good_fleet.store_url)
    small = run_readiness(good_fleet, store, TESTER, "n_plus_one_capacity",
                          ReadinessOptions(peak_rps=5.0, load_seconds=1.0, load_connections=4)).facts[0]
    assert small.status == "pass", f"{small.observed} {small.evidence}"
    saturation = small.evidence["saturation_rps"]
    assert saturation > 20 and small.evidence["load_step"]["errors"] == 0
    # negative control: a peak far above what N−1 instances can take fails
    huge = run_readiness(good_fleet, store, TESTER, "n_plus_one_capacity",
                         ReadinessOptions(peak_rps=saturation * 10, load_seconds=1.0, load_connections=4)).facts[0]
    assert huge.status == "fail", huge.observed
