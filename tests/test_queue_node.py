"""Node BullMQ in the loop: what fleetdeck's queue actions leave is what Node workers and Node's Queue see.

Node BullMQ (pinned in tests/node/package.json, installed by `make test` with `npm ci`) makes the jobs fail or
complete with a real Node worker; fleetdeck acts through actions/queue_ops.py; Node checks the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actions.queue_ops import CLEAN, DRAIN, PAUSE, RESUME, RETRY, RETRY_ALL, QueueActions
from collectors import bullmq_jobs
from collectors.bullmq_scripts import QueueClient, parse_ref
from core.config import FleetConfig, load_config
from core.store import Store
from tests.support_queues import OPERATOR, ensure_node_helper, node, slow_calls, slowlog_mark, write_queue_config


@pytest.fixture(scope="module", autouse=True)
def node_helper() -> None:
    ensure_node_helper()


@pytest.fixture
def setup(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[FleetConfig, Store]]:
    config = load_config(str(write_queue_config(tmp_path, redis_url, redis_prefix)))
    store = Store(config.store_url)
    yield config, store
    store.close()


def _ours(config: FleetConfig, queue: str) -> dict[str, int]:
    with QueueClient(parse_ref(config, queue)) as client:
        counts = bullmq_jobs.counts(client).as_dict()
    return {k: v for k, v in counts.items() if k not in ("paused", "is_paused")}


def test_jobs_retried_from_fleetdeck_are_processed_by_a_node_worker(setup: tuple[FleetConfig, Store],
                                                                    redis_url: str, redis_prefix: str) -> None:
    config, store = setup
    jobs = ([{"name": "charge", "data": {"fail": True, "reason": "card declined"}} for _ in range(3)]
            + [{"name": "charge", "data": {"fail": True, "reason": "timeout talking to the bank\nat bank.js:1"}}
               for _ in range(2)]
            + [{"name": "charge", "data": {}}])
    seeded = node(redis_url, redis_prefix, "payments", "seed", jobs=jobs)
    assert seeded["counts"]["failed"] == 5 and seeded["counts"]["completed"] == 1
    ids = seeded["ids"]
    with QueueClient(parse_ref(config, "payments")) as client:
        reasons = bullmq_jobs.failure_reasons(client)
    assert [(r.reason, r.count) for r in reasons.reasons] == [("card declined", 3),
                                                               ("timeout talking to the bank", 2)]
    mark, _threshold = slowlog_mark(redis_url)
    actions = QueueActions(config, store)
    one = actions.run(OPERATOR, RETRY, "payments", job_id=ids[3])
    assert one.ok, one.detail
    matching = actions.run(OPERATOR, RETRY_ALL, "payments", reason="card declined")
    assert matching.ok and matching.after["jobs"] == 3, matching.detail
    assert matching.after["counts"]["failed"] == 1 and matching.after["counts"]["waiting"] == 4
    retried = [*ids[:3], ids[3]]
    processed = node(redis_url, redis_prefix, "payments", "process", ids=retried)
    assert {processed["states"][job_id] for job_id in retried} == {"completed"}
    assert processed["counts"]["failed"] == 1 and processed["counts"]["completed"] == 5
    assert _ours(config, "payments") == processed["counts"]
    assert slow_calls(redis_url, redis_prefix, mark) == []


def test_pause_and_resume_from_fleetdeck_are_what_node_reports(setup: tuple[FleetConfig, Store], redis_url: str,
                                                               redis_prefix: str) -> None:
    config, store = setup
    node(redis_url, redis_prefix, "mail", "seed", jobs=[{"name": "send", "data": {}}])
    actions = QueueActions(config, store)
    assert actions.run(OPERATOR, PAUSE, "mail").ok
    assert node(redis_url, redis_prefix, "mail", "isPaused") == {"paused": True}
    assert actions.run(OPERATOR, RESUME, "mail").ok
    assert node(redis_url, redis_prefix, "mail", "isPaused") == {"paused": False}


def test_counts_after_clean_and_drain_equal_node_getjobcounts(setup: tuple[FleetConfig, Store], redis_url: str,
                                                              redis_prefix: str) -> None:
    config, store = setup
    jobs = ([{"name": "ok", "data": {}} for _ in range(5)]
            + [{"name": "bad", "data": {"fail": True, "reason": "nope"}} for _ in range(4)]
            + [{"name": "later", "data": {}, "opts": {"delay": 3_600_000}}])
    node(redis_url, redis_prefix, "reports", "seed", jobs=jobs)
    actions = QueueActions(config, store, batch=2)  # tiny batches: several calls, the loop must add up
    cleaned = actions.run(OPERATOR, CLEAN, "reports", state="failed", older_than_s=0, limit=3)
    assert cleaned.ok and cleaned.after["jobs"] == 3 and cleaned.after["calls"] >= 2, cleaned.detail
    assert actions.run(OPERATOR, CLEAN, "reports", state="completed", older_than_s=3600, limit=100).result == "noop"
    assert actions.run(OPERATOR, CLEAN, "reports", state="completed", older_than_s=0, limit=100).after["jobs"] == 5
    counts = node(redis_url, redis_prefix, "reports", "counts")["counts"]
    assert counts["failed"] == 1 and counts["completed"] == 0 and counts["delayed"] == 1
    assert _ours(config, "reports") == counts
    # drain keeps delayed jobs unless asked, like BullMQ's drain()
    node(redis_url, redis_prefix, "reports", "add", jobs=[{"name": "w", "data": {}} for _ in range(5)])
    drained = actions.run(OPERATOR, DRAIN, "reports")
    assert drained.ok and drained.after["jobs"] == 5, drained.detail
    counts = node(redis_url, redis_prefix, "reports", "counts")["counts"]
    assert counts["waiting"] == 0 and counts["delayed"] == 1
    assert _ours(config, "reports") == counts
