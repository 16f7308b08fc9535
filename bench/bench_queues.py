"""Queue browsing and "retry all" on a queue with 100,000 failed jobs, beside the Python bullmq library's own helpers.

Goals (issue 14, docs/queues.md): first page of the failed list ≤ 100 ms, the job view ≤ 50 ms, retry all
≥ 20,000 jobs/s with no single Redis call over 10 ms. Baseline in the same run, same queue: bullmq's
``Queue.getJobs(["failed"], 0, 24)``, ``Job.fromId`` + ``Queue.getJobLogs``, and ``Queue.retryJobs()`` (its
own loop: moveJobsToWait, 1,000 per call by default).

The 100,000 failed jobs are written with a pipeline in the layout a Node BullMQ 6 worker leaves (the same fields
as tests/node/bullmq_helper.mjs produces; a real worker would need minutes to fail that many). A few are made by
the Python bullmq worker first, and the bench checks its seeded hashes carry the same fields.
Redis's own SLOWLOG (threshold read from the server) is read for commands on the bench's keys after each run.

Run: PYTHONPATH=. .venv/bin/python bench/bench_queues.py [--jobs 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from bullmq import Job, Queue

from actions.auth import Principal
from actions.queue_ops import RETRY_ALL, QueueActions
from collectors import bullmq_jobs
from collectors.bullmq_scripts import QueueClient, QueueRef
from core.config import load_config
from core.store import Store

REDIS_URL = "redis://127.0.0.1:6379/0"
REASONS = ("card declined", "timeout talking to the bank", "ECONNRESET", "invalid address")
STACK = json.dumps(["Error: {reason}\n    at Worker.processor (/srv/app/worker.js:21:63)\n"
                    "    at Worker.callProcessJob (/srv/app/node_modules/bullmq/dist/cjs/classes/worker.js:199:21)"])


def seed_failed(client: redis.Redis, prefix: str, queue: str, count: int) -> None:
    base = f"{prefix}:{queue}:"
    now = int(time.time() * 1000) - count
    pipe = client.pipeline(transaction=False)
    for n in range(1, count + 1):
        reason = REASONS[n % len(REASONS)]
        finished = now + n
        pipe.hset(base + str(n), mapping={
            "name": f"charge-{n % 50}", "data": json.dumps({"order": n, "amount": n % 997, "note": "x" * 200}),
            "opts": json.dumps({"attempts": 3, "backoff": {"type": "exponential", "delay": 1000}}),
            "timestamp": finished - 50, "delay": 0, "priority": 0, "processedOn": finished - 10,
            "finishedOn": finished, "atm": 3, "ats": 3, "failedReason": reason,
            "stacktrace": STACK.replace("{reason}", reason),
        })  # fmt: skip
        pipe.zadd(base + "failed", {str(n): finished})
        if n % 5000 == 0:
            pipe.execute()
    pipe.hset(base + "meta", mapping={"opts.maxLenEvents": 10000, "version": "bullmq:6.7.0"})
    pipe.set(base + "id", count)
    pipe.execute()


def wipe(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for start in range(0, len(keys), 2000):
        client.delete(*keys[start : start + 2000])


def timed_ms(function, repeat: int = 7) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def slow_entries(client: redis.Redis, prefix: str, since: int) -> list[int]:
    return [int(e["duration"]) for e in client.slowlog_get(1024)
            if int(e["id"]) > since and prefix in (e["command"].decode("utf-8", "replace")
                                                   if isinstance(e["command"], bytes) else str(e["command"]))]


def newest_slowlog_id(client: redis.Redis) -> int:
    newest = client.slowlog_get(1)
    return int(newest[0]["id"]) if newest else -1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    prefix = f"fdbench{uuid.uuid4().hex[:6]}"
    raw = redis.Redis.from_url(REDIS_URL)
    threshold = int(raw.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
    work = Path(tempfile.mkdtemp(prefix="fdbench-queues-"))
    config_path = work / "fleet.yaml"
    config_path.write_text(f"""
services:
  - name: web
    command: "true {{port}}"
    ports: {{start: 20000, end: 20010}}
redis:
  - {{name: main, url: "{REDIS_URL}", queue_prefixes: [{prefix}]}}
store: {{url: "sqlite:///{work / 'fleetdeck.db'}"}}
""")
    config = load_config(str(config_path))
    store = Store(config.store_url)
    ref = QueueRef("main", REDIS_URL, prefix, "payments")
    results: list[tuple[str, str, str, str]] = []
    try:
        # ---- the layout check: a job failed by the real bullmq worker has the fields the seed writes
        async def real_failure() -> set[str]:
            from bullmq import Worker

            queue = Queue("shape", {"connection": REDIS_URL, "prefix": prefix})

            async def fail(job, token):  # type: ignore[no-untyped-def]
                raise RuntimeError("card declined")

            worker = Worker("shape", fail, {"connection": REDIS_URL, "prefix": prefix})
            job = await queue.add("charge", {"order": 1}, {"attempts": 1})
            for _ in range(200):
                if await queue.getFailedCount() == 1:
                    break
                await asyncio.sleep(0.05)
            await worker.close()
            fields = {k.decode() for k in raw.hkeys(f"{prefix}:shape:{job.id}")}
            await queue.close()
            return fields

        real_fields = asyncio.run(real_failure())
        seed_failed(raw, prefix, "layout", 1)
        seeded_fields = {k.decode() for k in raw.hkeys(f"{prefix}:layout:1")}
        missing = real_fields - seeded_fields
        print(f"seed layout check: real failed-job fields {sorted(real_fields)}; missing in seed: {sorted(missing)}")

        started = time.perf_counter()
        seed_failed(raw, prefix, "payments", args.jobs)
        print(f"seeded {args.jobs:,} failed jobs in {time.perf_counter() - started:.1f} s")

        # ---- browse: first page of the failed list, and one job's view
        client = QueueClient(ref)
        page_ms = timed_ms(lambda: bullmq_jobs.job_page(client, "failed", 0, 25))
        view_ms = timed_ms(lambda: bullmq_jobs.job_view(client, str(args.jobs // 2)))
        reasons_ms = timed_ms(lambda: bullmq_jobs.failure_reasons(client, 10_000), repeat=3)
        client.close()

        async def baseline_reads() -> tuple[float, float]:
            queue = Queue("payments", {"connection": REDIS_URL, "prefix": prefix})
            samples_page, samples_view = [], []
            for _ in range(7):
                t = time.perf_counter()
                await queue.getJobs(["failed"], 0, 24, asc=False)
                samples_page.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await Job.fromId(queue, str(args.jobs // 2))
                await queue.getJobLogs(str(args.jobs // 2))
                samples_view.append((time.perf_counter() - t) * 1000)
            await queue.close()
            return statistics.median(samples_page), statistics.median(samples_view)

        base_page_ms, base_view_ms = asyncio.run(baseline_reads())
        results.append(("first page of failed (25 jobs)", f"{page_ms:.1f} ms", "≤ 100 ms",
                        f"bullmq getJobs: {base_page_ms:.1f} ms"))
        results.append(("job view (fields, logs, children)", f"{view_ms:.1f} ms", "≤ 50 ms",
                        f"bullmq Job.fromId + getJobLogs: {base_view_ms:.1f} ms"))
        results.append(("top failure reasons (newest 10,000)", f"{reasons_ms:.1f} ms", "—", "—"))

        # ---- retry all: fleetdeck's action (audited, batched, progress), then bullmq's retryJobs on a fresh seed
        mark = newest_slowlog_id(raw)
        actions = QueueActions(config, store)
        started = time.perf_counter()
        result = actions.run(Principal("bench", "operator", "cli"), RETRY_ALL, "main/" + prefix + ":payments")
        ours_s = time.perf_counter() - started
        assert result.ok, result.detail
        moved = int(result.after["jobs"])
        ours_slow = slow_entries(raw, prefix, mark)
        ours_rate = moved / ours_s

        wipe(raw, prefix)
        seed_failed(raw, prefix, "payments", args.jobs)
        mark = newest_slowlog_id(raw)

        async def baseline_retry() -> float:
            queue = Queue("payments", {"connection": REDIS_URL, "prefix": prefix})
            t0 = time.perf_counter()
            await queue.retryJobs({"state": "failed", "count": 1000})  # bullmq's own loop over moveJobsToWait
            total = time.perf_counter() - t0
            left = await queue.getFailedCount()
            await queue.close()
            assert left == 0, left
            return total

        base_s = asyncio.run(baseline_retry())
        base_slow = slow_entries(raw, prefix, mark)
        results.append((f"retry all {args.jobs:,} failed", f"{ours_rate:,.0f} jobs/s ({ours_s:.2f} s)",
                        "≥ 20,000 jobs/s", f"bullmq retryJobs(): {args.jobs / base_s:,.0f} jobs/s ({base_s:.2f} s)"))
        results.append(("  longest single Redis call (client clock)", f"{result.after['max_call_ms']:.2f} ms"
                        f" ({result.after['max_call']}, {result.after['calls']} calls)", "≤ 10 ms",
                        "(not measurable per call inside bullmq)"))
        results.append(("  Redis call p50 / p99 (client clock)",
                        f"{result.after['p50_call_ms']:.2f} / {result.after['p99_call_ms']:.2f} ms", "—", "—"))
        results.append((f"  SLOWLOG entries over {threshold / 1000:g} ms (Redis clock)",
                        f"{len(ours_slow)} {sorted(d // 1000 for d in ours_slow)[-3:]} ms", "0",
                        f"{len(base_slow)} {sorted(d // 1000 for d in base_slow)[-3:]} ms"))
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
        results.append(("machine load average (1/5/15 min)", " ".join(load), "—", "—"))
    finally:
        wipe(raw, prefix)
        raw.close()
        store.close()

    width = max(len(r[0]) for r in results)
    print(f"\n{'operation':<{width}}  {'fleetdeck':<38} {'goal':<16} baseline (same run)")
    for name, ours, goal, base in results:
        print(f"{name:<{width}}  {ours:<38} {goal:<16} {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
