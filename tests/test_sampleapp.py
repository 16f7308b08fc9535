"""The sample app, run as real processes against the machine's Postgres and Redis.

Each test starts the instances it needs (`launch`), every one stopped by PID in a finalizer even when the test
fails. Two instances share one database and one BullMQ prefix, which is what makes "stateless" checkable:
state written through instance A must be readable through instance B.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import redis
from bullmq import Queue
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, wait_http
from tests.support_apps import AppInstance, Launcher, Reply, call, post_json


def login_and_read_back(a: AppInstance, b: AppInstance) -> tuple[Reply, Reply]:
    login = post_json(f"{a.base}/api/login", {"user": "ann"})
    assert login.status == 200, login.body
    cookie = login.headers["set-cookie"].split(";", 1)[0]
    assert cookie.startswith("sid=")
    on_a = call("GET", f"{a.base}/api/me", headers={"Cookie": cookie})
    on_b = call("GET", f"{b.base}/api/me", headers={"Cookie": cookie})
    return on_a, on_b


def upload_and_read_back(a: AppInstance, b: AppInstance) -> tuple[bytes, Reply, Reply]:
    payload = os.urandom(50_000)
    created = call("POST", f"{a.base}/api/uploads", payload, {"Content-Type": "application/octet-stream"})
    assert created.status == 201, created.body
    upload_id = created.json()["id"]
    return payload, call("GET", f"{a.base}/api/uploads/{upload_id}"), call("GET", f"{b.base}/api/uploads/{upload_id}")


def job_state(redis_url: str, prefix: str, queue_name: str, job_id: str) -> str:
    async def read() -> str:
        queue = Queue(queue_name, {"connection": redis_url, "prefix": prefix})
        try:
            return str(await queue.getJobState(job_id))
        finally:
            await queue.close()

    return asyncio.run(read())


def wait_job_state(redis_url: str, prefix: str, queue_name: str, job_id: str, wanted: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        state = job_state(redis_url, prefix, queue_name, job_id)
        if state == wanted:
            break
        time.sleep(0.1)
    return state


# --------------------------------------------------------------------------------------------------- tests
def test_health_headers_metrics_and_workers(launch: Launcher, redis_url: str, redis_prefix: str) -> None:
    a = launch("web-a")
    health = call("GET", f"{a.base}/health", headers={"X-Request-Id": "req-123"})
    assert health.status == 200
    assert health.headers["content-type"].startswith("application/health+json")
    assert health.headers["x-instance-id"] == "web-a"
    assert health.headers["x-request-id"] == "req-123"
    body = health.json()
    assert body["status"] == "pass"
    assert (body["instanceId"], body["version"], body["serviceId"]) == ("web-a", "1.2.3-test", "web")
    assert body["draining"] is False and body["inFlight"] == 0 and body["uptime"] > 0
    assert body["memory"]["rss"] > 10_000_000
    pool = body["database"]["pool"]
    assert set(pool) == {"totalCount", "idleCount", "waitingCount", "max"} and pool["max"] == 5
    assert 1 <= pool["totalCount"] <= 5
    for check in ("postgres:responseTime", "redis:responseTime"):
        entry = body["checks"][check][0]
        assert entry["status"] == "pass" and entry["observedUnit"] == "ms" and entry["observedValue"] > 0

    assert call("GET", f"{a.base}/livez").status == 200
    assert call("GET", f"{a.base}/readyz").status == 200
    index = call("GET", f"{a.base}/")
    assert index.status == 200 and b"web-a" in index.body
    missing = call("GET", f"{a.base}/no/such/route")
    assert missing.status == 404 and missing.headers["x-instance-id"] == "web-a"

    for number in range(5):
        echo = call("POST", f"{a.base}/work/echo", b"x" * number, {"X-Request-Id": f"r{number}"})
        assert echo.json() == {"instance": "web-a", "request_id": f"r{number}", "bytes": number}
    cpu = call("GET", f"{a.base}/work/cpu?ms=400")  # blocks the event loop: the lag gauge must notice
    assert cpu.status == 200 and cpu.json()["spins"] > 0
    time.sleep(0.3)  # let the lag timer fire once after the stall

    families = {f.name: f for f in text_string_to_metric_families(call("GET", f"{a.base}/metrics").body.decode())}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "http_requests_in_flight",
                 "eventloop_lag_seconds", "db_pool_total", "db_pool_idle", "db_pool_waiting", "db_pool_max"):
        assert name in families, f"{name} missing from /metrics"
    assert families["process_resident_memory_bytes"].samples[0].value > 10_000_000
    assert families["db_pool_max"].samples[0].value == 5
    assert families["eventloop_lag_seconds"].samples[0].value > 0.1
    histogram = families["http_request_duration_seconds"]
    assert histogram.type == "histogram"
    echo_count = [
        s.value for s in histogram.samples
        if s.name == "http_request_duration_seconds_count"
        and s.labels == {"method": "POST", "route": "/work/echo", "status_code": "200"}
    ]
    assert echo_count == [5.0]
    not_found = [s for s in histogram.samples if s.labels.get("status_code") == "404"]
    assert not_found and all(s.labels["route"] == "unmatched" for s in not_found)

    # fleetdeck counts workers per instance from CLIENT LIST: <prefix>:<queue>:w:<instance id>
    client = redis.Redis.from_url(redis_url)
    try:
        names = {c["name"] for c in client.client_list()}
    finally:
        client.close()
    assert f"{redis_prefix}:emails:w:web-a" in names and f"{redis_prefix}:reports:w:web-a" in names


def test_keepalive_timeout_closes_idle_connections(launch: Launcher) -> None:
    app = launch("web-a", KEEPALIVE_TIMEOUT_S="1")
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    try:
        connection.request("GET", "/livez")
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection", "").lower() != "close"
        time.sleep(0.3)  # well inside the timeout: the same connection still serves
        connection.request("GET", "/livez")
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        assert connection.sock is not None
        connection.sock.settimeout(3)
        started = time.monotonic()
        assert connection.sock.recv(1) == b""  # the server closes the idle connection ...
        assert 0.5 < time.monotonic() - started < 2.5  # ... after about KEEPALIVE_TIMEOUT_S
    finally:
        connection.close()


def test_postgres_sessions_uploads_and_jobs_shared(launch: Launcher, redis_url: str, redis_prefix: str) -> None:
    a, b = launch("web-a", wait_ready=False), launch("web-b", wait_ready=False)
    for instance in (a, b):  # both boot at once: the schema lock must keep them from tripping over each other
        wait_http(f"{instance.base}/readyz", timeout_s=15)

    on_a, on_b = login_and_read_back(a, b)
    assert on_a.status == 200 and on_a.json() == {"user": "ann", "instance": "web-a", "createdBy": "web-a"}
    assert on_b.status == 200 and on_b.json()["user"] == "ann" and on_b.json()["instance"] == "web-b"
    assert call("GET", f"{b.base}/api/me").status == 401
    assert call("GET", f"{b.base}/api/me", headers={"Cookie": "sid=forged.signature"}).status == 401

    payload, from_a, from_b = upload_and_read_back(a, b)
    assert from_a.status == 200 and from_a.body == payload
    assert from_b.status == 200 and from_b.body == payload
    multipart = call(
        "POST", f"{a.base}/api/uploads",
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello multipart\r\n--XX--\r\n",
        {"Content-Type": "multipart/form-data; boundary=XX"},
    )
    assert multipart.status == 201
    read_back = call("GET", f"{b.base}/api/uploads/{multipart.json()['id']}")
    assert read_back.body == b"hello multipart" and read_back.headers["content-type"].startswith("text/plain")
    assert call("GET", f"{b.base}/api/uploads/{'0' * 32}").status == 404

    good = post_json(f"{a.base}/api/jobs/emails", {"sleep_ms": 20})
    bad = post_json(f"{b.base}/api/jobs/reports", {"fail": True})
    assert good.status == 201 and bad.status == 201
    good_id, bad_id = good.json()["jobId"], bad.json()["jobId"]
    assert wait_job_state(redis_url, redis_prefix, "emails", good_id, "completed", 10) == "completed"
    assert wait_job_state(redis_url, redis_prefix, "reports", bad_id, "failed", 10) == "failed"
    status = call("GET", f"{b.base}/api/jobs/emails/{good_id}").json()
    assert status["state"] == "completed" and status["returnvalue"]["instance"] in ("web-a", "web-b")
    assert "asked to fail" in call("GET", f"{a.base}/api/jobs/reports/{bad_id}").json()["failedReason"]
    assert post_json(f"{a.base}/api/jobs/nosuchqueue", {}).status == 404
    assert call("GET", f"{a.base}/api/jobs/emails/999999").status == 404

    async def counts() -> dict[str, int]:
        queue = Queue("emails", {"connection": redis_url, "prefix": redis_prefix})
        try:
            return await queue.getJobCounts("completed", "failed", "waiting", "active")
        finally:
            await queue.close()

    assert asyncio.run(counts()) == {"completed": 1, "failed": 0, "waiting": 0, "active": 0}


def test_redis_sessions_shared(launch: Launcher, redis_url: str, redis_prefix: str) -> None:
    a = launch("web-a", SESSION_STORE="redis")
    b = launch("web-b", SESSION_STORE="redis")
    on_a, on_b = login_and_read_back(a, b)
    assert on_a.status == 200 and on_b.status == 200 and on_b.json()["user"] == "ann"
    client = redis.Redis.from_url(redis_url)
    try:
        stored = list(client.scan_iter(match=f"{redis_prefix}:sess:*"))
        assert len(stored) == 1 and 0 < client.ttl(stored[0]) <= 86400
    finally:
        client.close()


def test_misbehave_breaks_sessions_and_uploads_across_instances(launch: Launcher) -> None:
    a = launch("web-a", misbehave=True)
    b = launch("web-b", misbehave=True)
    on_a, on_b = login_and_read_back(a, b)
    assert on_a.status == 200 and on_b.status == 401
    payload, from_a, from_b = upload_and_read_back(a, b)
    assert from_a.status == 200 and from_a.body == payload
    assert from_b.status == 404


def test_health_fails_when_postgres_is_unreachable(launch: Launcher) -> None:
    # a port nobody listens on: the instance runs but cannot reach its database
    broken = launch(
        "web-x", wait_ready=False, DATABASE_URL=f"postgresql://127.0.0.1:{free_port()}/nodb",
        HEALTH_CHECK_TIMEOUT_S="0.5",
    )
    wait_http(f"{broken.base}/livez", timeout_s=15)
    health = call("GET", f"{broken.base}/health")
    assert health.status == 503
    body = health.json()
    assert body["status"] == "fail"
    assert body["checks"]["postgres:responseTime"][0]["status"] == "fail"
    assert body["checks"]["redis:responseTime"][0]["status"] == "pass"
    assert call("GET", f"{broken.base}/readyz").status == 503  # still starting: never reached its database


def test_sigterm_drains_in_flight_request_and_active_job(launch: Launcher, redis_url: str, redis_prefix: str) -> None:
    app = launch("web-a", DRAIN_DELAY_S="0.7", SHUTDOWN_TIMEOUT_S="15")
    job = post_json(f"{app.base}/api/jobs/emails", {"sleep_ms": 1500}).json()["jobId"]
    assert wait_job_state(redis_url, redis_prefix, "emails", job, "active", 5) == "active"

    slow_result: dict[str, Any] = {}

    def slow_post() -> None:
        try:
            slow_result["reply"] = call("POST", f"{app.base}/work/echo?ms=2500", b"payload", timeout=15)
        except Exception as error:  # recorded and asserted below: a dropped request must fail the test
            slow_result["error"] = error

    worker = threading.Thread(target=slow_post)
    worker.start()
    time.sleep(0.3)  # the slow request is in flight now
    assert call("GET", f"{app.base}/health").json()["inFlight"] == 1
    sent_at = time.monotonic()
    os.kill(app.process.pid, signal.SIGTERM)
    time.sleep(0.2)

    # during the drain delay the listener is still open: probes see the drain
    assert call("GET", f"{app.base}/readyz").status == 503
    draining = call("GET", f"{app.base}/health")
    assert draining.status == 200
    assert draining.json()["draining"] is True and draining.json()["status"] == "warn"

    time.sleep(1.0)  # past the drain delay: no new connections, while the slow request is still running
    assert worker.is_alive()
    with pytest.raises(ConnectionRefusedError):
        connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=2)
        try:
            connection.request("GET", "/livez")
        finally:
            connection.close()

    worker.join(timeout=15)
    assert "error" not in slow_result, slow_result.get("error")
    assert slow_result["reply"].status == 200 and slow_result["reply"].json()["bytes"] == 7
    assert app.process.wait(timeout=15) == 0, app.log()
    assert time.monotonic() - sent_at < 10
    assert job_state(redis_url, redis_prefix, "emails", job) == "completed"
    assert "stopped instance=web-a clean=True" in app.log()


def test_shutdown_timeout_cuts_a_request_and_exits_nonzero(launch: Launcher) -> None:
    """Negative control for the drain test: past SHUTDOWN_TIMEOUT_S the request is dropped and the exit says so."""
    app = launch("web-a", SHUTDOWN_TIMEOUT_S="2")
    outcome: dict[str, Any] = {}

    def too_slow() -> None:
        try:
            outcome["reply"] = call("POST", f"{app.base}/work/echo?ms=8000", b"x", timeout=15)
        except Exception as error:  # the expected outcome: the server gave up on this request
            outcome["error"] = error

    thread = threading.Thread(target=too_slow)
    thread.start()
    time.sleep(0.3)
    sent_at = time.monotonic()
    os.kill(app.process.pid, signal.SIGTERM)
    assert app.process.wait(timeout=10) == 1, app.log()
    assert time.monotonic() - sent_at < 4
    thread.join(timeout=10)
    # the server gave up on the request: the client sees the connection closed without a (complete) answer
    assert "reply" not in outcome, f"the cut request was answered: {outcome['reply'].status}"
    assert isinstance(outcome["error"], (ConnectionError, http.client.HTTPException, urllib.error.URLError)), outcome
    assert "clean=False" in app.log()
