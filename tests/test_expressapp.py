"""The reference Express app (compose/expressapp) as a real Node process: what fleetdeck reads from it (health,
metrics; the same contract as the Python sample app, parametrized over both), and that it is the stateless app it
claims to be (sessions and multer uploads in Postgres, BullMQ jobs done by its Node worker, graceful SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
from bullmq import Queue
from prometheus_client.parser import text_string_to_metric_families

from collectors.instances import InstanceCollector, InstanceTarget
from collectors.runner import Runner
from tests.support import wait_http
from tests.support_apps import Launcher, call, post_json
from tests.support_load import SAMPLE_APPS


def multipart(field: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    boundary = "fleetdeckTestBoundary7"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("app", SAMPLE_APPS)
def test_collector_reads_health_and_metrics_of_both_sample_apps(launch: Launcher, app: str) -> None:
    running = launch("web-a", app=app)
    for _ in range(3):
        assert call("POST", f"{running.base}/work/echo", b"abc")[0] == 200
    target = InstanceTarget("web/web-a", "web", running.base, "/health", "/metrics", 3.0)
    collector = InstanceCollector(fixed_targets=[target])

    async def collect() -> dict[str, Any]:
        try:
            samples = await Runner(timeout_s=5).run_many(collector, [target])
        finally:
            await collector.aclose()
        return {s.metric: s for s in samples if s.target == "web/web-a"}

    by_metric = asyncio.run(collect())
    assert by_metric["up"].value == 1, by_metric["up"].text
    assert by_metric["health_status"].value == 0 and by_metric["health_status"].text == "pass"
    assert by_metric["version"].text == "1.2.3-test"
    assert by_metric["pool_total"].value >= 1 and by_metric["memory_rss_bytes"].value > 10_000_000
    assert "event_loop_lag_s" in by_metric and "cpu_seconds_total" in by_metric
    assert by_metric["requests_total"].value >= 3
    # the Express app counts the probe itself as in flight, as most Express apps do; ours leaves probes out
    assert by_metric["in_flight"].value == (1 if app == "express" else 0)


def test_express_metrics_use_prom_client_names(launch: Launcher) -> None:
    running = launch("web-a", app="express")
    for number in range(4):
        assert call("POST", f"{running.base}/work/echo", b"x" * number)[0] == 200
    assert call("GET", f"{running.base}/no/such/route")[0] == 404
    status, headers, _ = call("GET", f"{running.base}/work/cpu?ms=300")
    assert status == 200 and headers["x-instance-id"] == "web-a"
    families = {f.name: f for f in text_string_to_metric_families(call("GET", f"{running.base}/metrics")[2].decode())}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "nodejs_eventloop_lag_seconds",
                 "http_requests_in_flight", "http_request_duration_seconds"):
        assert name in families, f"{name} missing from /metrics"
    histogram = families["http_request_duration_seconds"]
    counts = {(s.labels["route"], s.labels["status_code"]): s.value for s in histogram.samples
              if s.name == "http_request_duration_seconds_count"}
    assert counts[("/work/echo", "200")] == 4
    assert counts[("unmatched", "404")] == 1
    body = json.loads(call("GET", f"{running.base}/health")[2])
    assert body["inFlight"] == 1 and body["database"]["pool"]["max"] == 5
    assert set(body["checks"]) == {"postgres:responseTime", "redis:responseTime"}


def test_express_sessions_uploads_and_jobs_are_shared(launch: Launcher, redis_url: str, redis_prefix: str) -> None:
    a, b = launch("web-a", app="express", wait_ready=False), launch("web-b", app="express", wait_ready=False)
    for running in (a, b):  # both boot at once: the schema lock keeps them from tripping over each other
        wait_http(f"{running.base}/readyz", timeout_s=20)

    status, headers, body = post_json(f"{a.base}/api/login", {"user": "ann"})
    assert status == 200 and json.loads(body) == {"user": "ann", "instance": "web-a"}
    cookie = headers["set-cookie"].split(";", 1)[0]
    assert cookie.startswith("sid=")
    status, _, body = call("GET", f"{b.base}/api/me", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body) == {"user": "ann", "instance": "web-b", "createdBy": "web-a"}
    assert call("GET", f"{b.base}/api/me")[0] == 401

    payload = os.urandom(40_000)
    form, content_type = multipart("file", "blob.bin", "application/octet-stream", payload)
    status, _, body = call("POST", f"{a.base}/api/uploads", form, {"Content-Type": content_type})
    assert status == 201, body
    upload_id = json.loads(body)["id"]
    status, headers, read_back = call("GET", f"{b.base}/api/uploads/{upload_id}")
    assert status == 200 and read_back == payload and headers["content-type"].startswith("application/octet-stream")
    assert call("GET", f"{b.base}/api/uploads/{'0' * 32}")[0] == 404

    good = json.loads(post_json(f"{a.base}/api/jobs/emails", {"sleep_ms": 20})[2])["jobId"]
    bad = json.loads(post_json(f"{b.base}/api/jobs/reports", {"fail": True})[2])["jobId"]
    deadline = time.monotonic() + 15
    states: tuple[str, str] = ("", "")
    while time.monotonic() < deadline:
        states = (json.loads(call("GET", f"{a.base}/api/jobs/emails/{good}")[2])["state"],
                  json.loads(call("GET", f"{a.base}/api/jobs/reports/{bad}")[2])["state"])
        if states == ("completed", "failed"):
            break
        time.sleep(0.1)
    assert states == ("completed", "failed")
    done = json.loads(call("GET", f"{b.base}/api/jobs/emails/{good}")[2])
    assert done["returnvalue"]["instance"] in ("web-a", "web-b")
    assert post_json(f"{a.base}/api/jobs/nosuchqueue", {})[0] == 404

    async def counts() -> dict[str, int]:  # Python BullMQ reads what Node BullMQ wrote
        queue = Queue("emails", {"connection": redis_url, "prefix": redis_prefix})
        try:
            return await queue.getJobCounts("completed", "failed", "waiting", "active")
        finally:
            await queue.close()

    assert asyncio.run(counts()) == {"completed": 1, "failed": 0, "waiting": 0, "active": 0}


def job_state(redis_url: str, prefix: str, queue_name: str, job_id: str) -> str:
    async def read() -> str:
        queue = Queue(queue_name, {"connection": redis_url, "prefix": prefix})
        try:
            return str(await queue.getJobState(job_id))
        finally:
            await queue.close()

    return asyncio.run(read())


def test_express_sigterm_finishes_in_flight_request_and_active_job(launch: Launcher, redis_url: str,
                                                                   redis_prefix: str) -> None:
    running = launch("web-a", app="express", SHUTDOWN_TIMEOUT_S="15")
    job = json.loads(post_json(f"{running.base}/api/jobs/emails", {"sleep_ms": 1500})[2])["jobId"]
    deadline = time.monotonic() + 5
    while json.loads(call("GET", f"{running.base}/api/jobs/emails/{job}")[2])["state"] != "active":
        assert time.monotonic() < deadline, "the job never became active"
        time.sleep(0.05)
    outcome: dict[str, Any] = {}

    def slow_post() -> None:
        try:
            outcome["reply"] = call("POST", f"{running.base}/work/echo?ms=2000", b"payload", timeout=15)
        except Exception as error:  # recorded and asserted below: a dropped request must fail the test
            outcome["error"] = error

    thread = threading.Thread(target=slow_post)
    thread.start()
    time.sleep(0.3)
    assert json.loads(call("GET", f"{running.base}/health")[2])["inFlight"] == 2  # the slow POST and the probe
    running.process.send_signal(signal.SIGTERM)
    thread.join(timeout=15)
    assert "error" not in outcome, outcome.get("error")
    status, _, body = outcome["reply"]
    assert status == 200 and json.loads(body)["bytes"] == 7
    assert running.process.wait(timeout=15) == 0, running.log()
    log = running.log()
    assert "draining on SIGTERM" in log and "stopped cleanly" in log
    assert job_state(redis_url, redis_prefix, "emails", job) == "completed"
