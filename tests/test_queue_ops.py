"""Queue browsing and actions against real Redis, queues made by the real PyPI bullmq (Node: test_queue_node.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bullmq import FlowProducer, Job, Queue, Worker

from actions import audit
from actions.queue_ops import (
    CLEAN,
    DRAIN,
    OBLITERATE,
    PAUSE,
    PROMOTE,
    PROMOTE_ALL,
    REMOVE,
    QueueActions,
    lock_name,
)
from collectors import bullmq_jobs
from collectors.bullmq_scripts import QueueClient, parse_ref
from core.config import FleetConfig, load_config
from core.store import Store
from tests.support_queues import ADMIN, OPERATOR, VIEWER, run_cli, slow_calls, slowlog_mark, write_queue_config


@pytest.fixture
def setup(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[FleetConfig, Store, Path]]:
    path = write_queue_config(tmp_path, redis_url, redis_prefix)
    config = load_config(str(path))
    store = Store(config.store_url)
    yield config, store, path
    store.close()


def _queue(redis_url: str, prefix: str, name: str) -> Queue:
    return Queue(name, {"connection": redis_url, "prefix": prefix})


async def _python_counts(redis_url: str, prefix: str, name: str) -> dict[str, int]:
    queue = _queue(redis_url, prefix, name)
    try:
        return await queue.getJobCounts()
    finally:
        await queue.close()


def _ours(config: FleetConfig, name: str) -> dict[str, int]:
    with QueueClient(parse_ref(config, name)) as client:
        counts = bullmq_jobs.counts(client).as_dict()
    return {k: v for k, v in counts.items() if k not in ("paused", "is_paused")}


def test_pages_newest_first_search_and_a_bounded_job_view(setup: tuple[FleetConfig, Store, Path], redis_url: str,
                                                          redis_prefix: str) -> None:
    config, _store, _path = setup

    async def seed() -> None:
        queue = _queue(redis_url, redis_prefix, "browse")
        await queue.addBulk([{"name": f"email-{i}", "data": {"i": i}} for i in range(30)])
        big = await queue.add("**bold** <b>x</b>\x1b[31m", {"blob": "x" * 300_000}, {"attempts": 3})
        job = await Job.fromId(queue, big.id)
        await job.log("first line")
        await job.log("second line")
        flow = FlowProducer({"connection": redis_url, "prefix": redis_prefix})
        await flow.add({"name": "parent", "queueName": "browse",
                        "children": [{"name": "child-a", "queueName": "browse"}]})
        await flow.close()
        await queue.close()

    async def bullmq_order(start: int, end: int) -> list[str]:
        queue = _queue(redis_url, redis_prefix, "browse")
        try:
            return [job.id for job in await queue.getJobs(["waiting"], start, end, asc=False)]
        finally:
            await queue.close()

    asyncio.run(seed())
    with QueueClient(parse_ref(config, "browse")) as client:
        page = bullmq_jobs.job_page(client, "waiting", 0, 10)
        assert page.total == 32 and page.has_more  # 30 + big + the flow's child (the parent waits for children)
        assert [row.id for row in page.rows] == asyncio.run(bullmq_order(0, 9))  # BullMQ's newest first
        second = bullmq_jobs.job_page(client, "waiting", 10, 10)
        assert [row.id for row in second.rows] == asyncio.run(bullmq_order(10, 19))
        assert [row.name for row in page.rows[:3]] == ["child-a", "**bold** <b>x</b>\x1b[31m", "email-29"]
        found = bullmq_jobs.job_page(client, "waiting", 0, 50, search="EMAIL-2")
        assert sorted(row.name for row in found.rows) == sorted(["email-2", *[f"email-2{i}" for i in range(10)]])
        assert found.search_complete and found.scanned == 32
        budget = bullmq_jobs.job_page(client, "waiting", 0, 50, search="email-", scan_budget=5)
        assert budget.scanned == 5 and not budget.search_complete

        big_row = next(row for row in page.rows if row.name.startswith("**bold**"))
        assert big_row.attempts == 3 and big_row.attempts_made == 0
        view = bullmq_jobs.job_view(client, big_row.id, max_bytes=1000)
        assert view is not None and view.state == "waiting"
        data = view.fields["data"]
        assert data.truncated and data.size > 300_000 and len(data.text) == 1000
        assert view.logs == ["first line", "second line"] and view.log_count == 2
        assert json.loads(view.pretty("opts"))["attempts"] == 3

        parent_row = bullmq_jobs.job_page(client, "waiting-children", 0, 10).rows[0]
        parent = bullmq_jobs.job_view(client, parent_row.id)
        assert parent is not None and len(parent.children_pending) == 1
        child_id = parent.children_pending[0].rsplit(":", 1)[1]
        child = bullmq_jobs.job_view(client, child_id)
        assert child is not None and child.parent.endswith(f":{parent_row.id}")
        assert bullmq_jobs.job_view(client, "no-such-job") is None


def test_roles_dry_run_lock_and_audit(setup: tuple[FleetConfig, Store, Path], redis_url: str,
                                      redis_prefix: str) -> None:
    config, store, _path = setup

    async def seed() -> None:
        queue = _queue(redis_url, redis_prefix, "guarded")
        await queue.addBulk([{"name": "w", "data": {}} for _ in range(5)])
        await queue.close()

    asyncio.run(seed())
    actions = QueueActions(config, store)
    before = _ours(config, "guarded")
    # a viewer is refused, and the refusal is audited; nothing changed
    refused = actions.run(VIEWER, PAUSE, "guarded")
    assert refused.refused and "needs the operator role" in str(refused.error)
    # an operator may not obliterate
    assert actions.run(OPERATOR, OBLITERATE, "guarded").refused
    # the dry run changes nothing and says what would happen
    plan = actions.plan(DRAIN, "guarded", OPERATOR)
    assert plan.allowed and plan.disruptive and plan.confirm_text == "guarded" and plan.params["jobs"] == 5
    assert actions.plan(DRAIN, "guarded", VIEWER).allowed is False
    assert _ours(config, "guarded") == before
    # busy: another action holds the queue's lock
    ref = parse_ref(config, "guarded")
    store.acquire_lock(lock_name(ref), PAUSE, "someone", "op-other", 60)
    busy = actions.run(OPERATOR, PAUSE, "guarded")
    assert busy.refused and "busy" in str(busy.error)
    store.release_lock(lock_name(ref), "op-other")
    # the real run: audited with the counts before and after
    done = actions.run(OPERATOR, DRAIN, "guarded")
    assert done.ok and done.after["jobs"] == 5, done.detail
    entries = [e for e in store.audit() if e.op_id == done.op_id]
    final = next(e for e in entries if e.result == audit.OK)
    assert final.before["counts"]["waiting"] == 5 and final.after["counts"]["waiting"] == 0
    assert {e.result for e in entries} == {audit.STARTED, audit.OK}
    assert any(e.result == audit.REFUSED and e.who == "vic" for e in store.audit())
    # idempotent by op id
    again = actions.run(OPERATOR, DRAIN, "guarded", op_id=done.op_id)
    assert again.ok and "already done" in again.detail
    # an admin obliterates; nothing of the queue is left
    gone = actions.run(ADMIN, OBLITERATE, "guarded")
    assert gone.ok, gone.detail
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{redis_prefix}:guarded:*")) == []
    finally:
        client.close()


def test_batched_drain_clean_promote_remove_match_bullmq_and_stay_short(
        setup: tuple[FleetConfig, Store, Path], redis_url: str, redis_prefix: str) -> None:
    config, store, _path = setup

    async def seed() -> None:
        queue = _queue(redis_url, redis_prefix, "bulk")
        for start in range(0, 2500, 500):
            await queue.addBulk([{"name": "bulk", "data": {"n": n}} for n in range(start, start + 500)])
        for n in range(3):
            await queue.add("later", {"n": n}, {"delay": 3_600_000})
        await queue.add("prio", {}, {"priority": 3})
        await queue.close()

    asyncio.run(seed())
    mark, threshold = slowlog_mark(redis_url)
    actions = QueueActions(config, store, batch=1000)
    with QueueClient(parse_ref(config, "bulk")) as client:
        delayed = bullmq_jobs.job_page(client, "delayed").rows
    promoted = actions.run(OPERATOR, PROMOTE, "bulk", job_id=delayed[0].id)
    assert promoted.ok, promoted.detail
    assert actions.run(OPERATOR, PROMOTE, "bulk", job_id=delayed[0].id).result == audit.REFUSED  # not delayed now
    removed = actions.run(OPERATOR, REMOVE, "bulk", job_id=delayed[1].id)
    assert removed.ok and removed.after["counts"]["delayed"] == 1
    assert actions.run(OPERATOR, PROMOTE_ALL, "bulk").after["counts"]["delayed"] == 0
    assert _ours(config, "bulk") == asyncio.run(_python_counts(redis_url, redis_prefix, "bulk"))

    drained = actions.run(OPERATOR, DRAIN, "bulk")
    assert drained.ok and drained.after["jobs"] == 2503, drained.detail  # 2500 + 2 promoted + the prioritized one
    assert drained.after["calls"] >= 3  # batches of 1000, not one call
    assert _ours(config, "bulk") == asyncio.run(_python_counts(redis_url, redis_prefix, "bulk"))
    assert drained.after["counts"]["waiting"] == 0 and drained.after["counts"]["prioritized"] == 0

    # clean: only completed/failed, the limit is honoured
    refused = actions.run(OPERATOR, CLEAN, "bulk", state="waiting", older_than_s=0, limit=10)
    assert refused.refused
    bad = actions.run(OPERATOR, CLEAN, "bulk", state="failed", older_than_s="soon", limit=10)
    assert bad.refused and "number" in str(bad.error)
    # the longest single Redis call, by Redis's own clock: no command of ours over the slowlog threshold
    assert threshold <= 10_000
    assert slow_calls(redis_url, redis_prefix, mark) == []
    print(f"longest Redis call (client-side) during drain: {drained.after['max_call_ms']} ms"
          f" ({drained.after['max_call']})")


def test_cli_queue_verbs_roles_confirm_and_json(tmp_path: Path, setup: tuple[FleetConfig, Store, Path],
                                                redis_url: str, redis_prefix: str) -> None:
    _config, _store, path = setup

    async def seed() -> None:
        queue = _queue(redis_url, redis_prefix, "cli")
        await queue.addBulk([{"name": f"n\x1b[2J{i}", "data": {}} for i in range(3)])
        await queue.close()

    asyncio.run(seed())
    listed = run_cli(path, "queue", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["queue"] == f"main/{redis_prefix}:cli")
    assert row["waiting"] == 3
    jobs = run_cli(path, "queue", "jobs", "cli", "waiting", "--json")
    assert json.loads(jobs.stdout)["rows"][0]["name"] == "n\x1b[2J2"
    text = run_cli(path, "queue", "jobs", "cli", "waiting")
    assert "\x1b" not in text.stdout and "n\\x1b[2J2" in text.stdout  # escaped for the terminal
    assert run_cli(path, "queue", "job", "cli", "nope").returncode == 3
    # dry run: exit 0, nothing changes; destructive without --yes and no terminal: refused (3)
    dry = run_cli(path, "queue", "drain", "cli", "--dry-run")
    assert dry.returncode == 0 and "3 waiting" in dry.stdout
    assert run_cli(path, "queue", "drain", "cli").returncode == 3
    pause = run_cli(path, "queue", "pause", "cli")
    assert pause.returncode == 0, pause.stderr
    viewer = write_queue_config(tmp_path, redis_url, redis_prefix, cli_role="viewer")
    denied = run_cli(viewer, "queue", "resume", "cli")
    assert denied.returncode == 3 and "operator" in denied.stderr
    assert run_cli(path, "queue", "obliterate", "cli", "--yes").returncode == 3  # operator: admin only
    drained = run_cli(path, "queue", "drain", "cli", "--yes")
    assert drained.returncode == 0 and "drained 3 job(s)" in drained.stdout


def test_throughput_from_bullmq_metrics_keys(setup: tuple[FleetConfig, Store, Path], redis_url: str,
                                             redis_prefix: str) -> None:
    config, _store, _path = setup

    async def work() -> None:
        conn = {"connection": redis_url, "prefix": redis_prefix}
        queue = _queue(redis_url, redis_prefix, "metered")

        async def process(job, token):  # type: ignore[no-untyped-def]
            if job.name == "bad":
                raise RuntimeError("bad job")
            return "ok"

        worker = Worker("metered", process, {**conn, "metrics": {"maxDataPoints": 60}})
        for name in ("good", "good", "bad"):
            await queue.add(name, {}, {"attempts": 1})
        for _ in range(300):
            counts = await queue.getJobCounts("completed", "failed")
            if counts["completed"] + counts["failed"] == 3:
                break
            await asyncio.sleep(0.05)
        await worker.close()
        await queue.close()

    with QueueClient(parse_ref(config, "metered")) as client:
        assert bullmq_jobs.metrics_minutes(client) is None  # no worker recorded metrics yet
        asyncio.run(work())
        points = bullmq_jobs.metrics_minutes(client)
    assert points is not None
    assert sum(p.completed for p in points) == 2 and sum(p.failed for p in points) == 1


def test_unreachable_redis_is_a_failure_not_a_crash(tmp_path: Path, redis_prefix: str) -> None:
    from tests.support import free_port

    config = load_config(str(write_queue_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", redis_prefix)))
    store = Store(config.store_url)
    try:
        actions = QueueActions(config, store, timeout_s=1.0)
        assert not actions.plan(PAUSE, "q", OPERATOR).allowed
        result = actions.run(OPERATOR, PAUSE, "q")
        assert result.result == audit.FAILED and "cannot read the queue" in str(result.error)
        assert [e.result for e in store.audit(op_id=result.op_id)] == [audit.FAILED]
        assert store.locks() == []  # the queue lock is released
    finally:
        store.close()
