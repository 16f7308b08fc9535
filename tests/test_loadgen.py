"""The load generator against real servers: an nginx we start on a free port and a scripted Python HTTP server.

Counts are exact: a run bounded to N requests must report exactly N outcomes of the expected kinds.

Size (~530 lines): the generator's two dozen tests next to the two real servers they run against (the scripted
server and nginx helpers and fixtures below); the pure shape/histogram tests at the top are what those runs build on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actions.proving.loadgen import (
    Constant,
    Histogram,
    LoadSpec,
    Progress,
    Ramp,
    Step,
    Steps,
    TargetRefused,
    check_target,
    parse_shape,
    run_load,
)
from tests.support import free_port, wait_http

NGINX = "/usr/sbin/nginx"

# ---- shapes (pure functions) ------------------------------------------------------------------------------


def test_constant_shape() -> None:
    shape = Constant(rate=100, duration_s=10)
    assert shape.tick(0) == 100 and shape.tick(9.99) == 100
    assert shape.tick(10) is None and shape.tick(-1) is None
    assert shape.scheduled(2.5) == pytest.approx(250)
    assert shape.scheduled(99) == pytest.approx(1000)  # clamped to the duration


def test_ramp_shape_up_and_down() -> None:
    up = Ramp(start_rate=0, end_rate=100, duration_s=10)
    assert up.tick(0) == 0 and up.tick(5) == pytest.approx(50) and up.tick(10) is None
    assert up.scheduled(10) == pytest.approx(500)  # area of the triangle
    assert up.scheduled(5) == pytest.approx(125)
    down = Ramp(start_rate=100, end_rate=0, duration_s=10)
    assert down.tick(2) == pytest.approx(80)
    assert down.scheduled(10) == pytest.approx(500)


def test_steps_shape_and_staircase() -> None:
    shape = Steps((Step(2, 10), Step(3, 50), Step(1, 0)))
    assert shape.duration_s == 6
    assert [shape.tick(t) for t in (0, 1.9, 2, 4.9, 5, 6)] == [10, 10, 50, 50, 0, None]
    assert shape.step_index(4) == 1
    assert shape.scheduled(3) == pytest.approx(2 * 10 + 1 * 50)
    assert shape.scheduled(100) == pytest.approx(20 + 150)
    stairs = Steps.staircase(first_rate=100, increment=100, count=3, step_duration_s=5)
    assert [s.rate for s in stairs.steps] == [100, 200, 300] and stairs.duration_s == 15


def test_shape_is_pure_and_scheduled_is_the_integral_of_tick() -> None:
    for shape in (Constant(30, 4), Ramp(10, 90, 4), Steps((Step(1, 5), Step(3, 40)))):
        assert shape.tick(1.234) == shape.tick(1.234)
        dt = 0.001
        integral = sum((shape.tick(i * dt) or 0) * dt for i in range(int(4 / dt)))
        assert integral == pytest.approx(shape.scheduled(4), rel=0.01)


def test_parse_shape_and_validation() -> None:
    assert parse_shape("constant:50:10") == Constant(50, 10)
    assert parse_shape("ramp:0:200:30") == Ramp(0, 200, 30)
    assert parse_shape("steps:100@5,200@5") == Steps((Step(5, 100), Step(5, 200)))
    for bad in ("constant:50", "wave:1:2", "constant:-5:10", "ramp:0:10:0", "steps:"):
        with pytest.raises(ValueError):
            parse_shape(bad)


# ---- histogram ----------------------------------------------------------------------------------------------


def test_histogram_percentiles_close_to_exact_and_merge_adds_up() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=7, sigma=1.2, size=20_000).astype(int)  # µs, a realistic long tail
    first, second = Histogram(), Histogram()
    for index, value in enumerate(values):
        (first if index % 2 else second).record_us(int(value))
    merged = Histogram().merge(first).merge(second)
    assert merged.total == len(values) and merged.max_us == values.max() and merged.min_us == values.min()
    for q in (50, 95, 99):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        assert merged.percentile_us(q) == pytest.approx(exact, rel=0.02)
    restored = Histogram.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert restored.counts == merged.counts and restored.percentile_us(99) == merged.percentile_us(99)
    interval = merged.minus(first)
    assert interval.total == second.total and interval.counts == second.counts


# ---- real servers -------------------------------------------------------------------------------------------

SCRIPTED_SERVER = textwrap.dedent(
    '''
    """HTTP/1.1 server whose path says how to misbehave; counts what it received (GET /__stats)."""
    import asyncio, json, sys

    INSTANCE = sys.argv[2]
    seen = {"requests": 0, "ids": set(), "body_bytes": 0, "methods": {}, "custom": 0}

    def response(status, body=b"ok", extra=b""):
        return (b"HTTP/1.1 %d X\\r\\nContent-Length: %d\\r\\nX-Instance-Id: %s\\r\\n%s\\r\\n"
                % (status, len(body), INSTANCE.encode(), extra)) + body

    async def handle(reader, writer):
        served_here = 0
        while True:
            try:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            lines = head.decode("latin-1").split("\\r\\n")
            method, path, _ = lines[0].split(" ")
            headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if path == "/__stats":
                stats = dict(seen, ids=len(seen["ids"]))
                writer.write(response(200, json.dumps(stats).encode(), b"Connection: close\\r\\n"))
                await writer.drain()
                break
            seen["requests"] += 1
            seen["ids"].add(headers.get("x-request-id"))
            seen["body_bytes"] += len(body)
            seen["methods"][method] = seen["methods"].get(method, 0) + 1
            seen["custom"] += headers.get("x-test") == "yes"
            served_here += 1
            if path == "/drop":  # read the request, then close without a response
                break
            if path == "/drop-second" and served_here == 2:  # the keep-alive race, made deterministic
                break
            if path.startswith("/status/"):
                writer.write(response(int(path.split("/")[2])))
            elif path.startswith("/delay/"):
                await asyncio.sleep(int(path.split("/")[2]) / 1000)
                writer.write(response(200))
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
                             b"5\\r\\nhello\\r\\n6;ext=1\\r\\n world\\r\\n0\\r\\n\\r\\n")
            elif path == "/close":  # announced close: not an error
                writer.write(response(200, extra=b"Connection: close\\r\\n"))
                await writer.drain()
                break
            elif path == "/idle-close":  # keep-alive response, then close the idle connection soon after
                writer.write(response(200))
                await writer.drain()
                await asyncio.sleep(0.05)
                break
            else:
                writer.write(response(200))
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    '''
)


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.url}/__stats", timeout=5) as answer:
            return json.loads(answer.read())


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _start_scripted(tmp_path: Path, instance: str) -> Served:
    script = tmp_path / "scripted_server.py"
    script.write_text(SCRIPTED_SERVER)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(script), str(port), instance])
    try:
        wait_http(f"http://127.0.0.1:{port}/__stats", timeout_s=15)  # not counted as a request
    except Exception:
        _stop(process)
        raise
    return Served(process, port)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Served]:
    served = _start_scripted(tmp_path, "py-1")
    yield served
    _stop(served.process)


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000;
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        location = /ok {{ add_header X-Instance-Id nginx-1; return 200 "ok"; }}
        {proxy}
    }}
}}
"""


class Nginx:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def _start_nginx(prefix: Path, upstream_ports: list[int] | None = None) -> Nginx:
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    upstream = proxy = ""
    if upstream_ports:
        servers = " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports)
        upstream = f"upstream app {{ {servers} }}"
        proxy = 'location /app { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, upstream=upstream, proxy=proxy))
    process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)])
    try:
        wait_http(f"http://127.0.0.1:{port}/ok", timeout_s=15)
    except Exception:
        _stop(process, signal.SIGQUIT)
        raise
    return Nginx(process, port)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = _start_nginx(tmp_path / "nginx")
    yield server
    _stop(server.process, signal.SIGQUIT)


def _outcomes(result: object) -> int:
    """Every started request accounted for exactly once."""
    r = result  # type: ignore[assignment]
    assert r.requests == sum(r.status_counts.values()) + sum(  # type: ignore[attr-defined]
        v
        for k, v in r.errors_by_kind.items()
        if not k.startswith("http_")  # type: ignore[attr-defined]
    )
    assert r.started == r.requests + r.cancelled  # type: ignore[attr-defined]
    return int(r.requests)  # type: ignore[attr-defined]


def test_request_count_bound_exact_against_nginx(nginx: Nginx) -> None:
    result = run_load(LoadSpec(f"{nginx.url}/ok", connections=8, duration_s=20, max_requests=1500))
    assert result.stop_reason == "max_requests"
    assert _outcomes(result) == 1500
    assert result.status_counts == {"200": 1500} and result.errors == 0 and result.ok == 1500
    assert result.connects == 8  # keep-alive: one connection per slot for the whole run
    assert result.instances == {"nginx-1": 1500}
    assert result.latency_ms["p50"] > 0 and result.latency_ms["p99"] >= result.latency_ms["p50"]
    assert result.cpu_s > 0 and result.cpu_per_request_us > 0
    assert json.loads(result.to_json())["requests"] == 1500
    assert result.latency_histogram().total == 1500


def test_duration_bound_stops_the_run(nginx: Nginx) -> None:
    started = time.monotonic()
    result = run_load(LoadSpec(f"{nginx.url}/ok", connections=4, duration_s=1.0, max_requests=50_000_000))
    took = time.monotonic() - started
    assert result.stop_reason == "duration"
    assert 0.95 <= result.elapsed_s < 2.0 and took < 3.0
    assert _outcomes(result) > 100 and result.errors == 0


def test_cancel_mid_run_stops_quickly(nginx: Nginx) -> None:
    cancel = threading.Event()
    results = []
    seen: list[Progress] = []
    runner = threading.Thread(
        target=lambda: results.append(
            run_load(
                LoadSpec(f"{nginx.url}/ok", connections=4, duration_s=30, max_requests=50_000_000),
                progress=seen.append,
                cancel=cancel,
            )
        )
    )
    runner.start()
    time.sleep(1.2)
    cancel_at = time.monotonic()
    cancel.set()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert time.monotonic() - cancel_at < 1.0
    result = results[0]
    assert result.stop_reason == "cancelled" and result.elapsed_s < 5
    _outcomes(result)
    assert seen and seen[0].requests > 0 and seen[0].rps > 0 and seen[0].p95_ms > 0  # ~0.5 s progress ticks


def test_non_loopback_targets_are_refused_unless_allowed() -> None:
    for url in ("http://192.0.2.10/", "http://10.0.0.1:8000/x", "http://[2001:db8::1]/"):
        with pytest.raises(TargetRefused, match="allowed_hosts"):
            run_load(LoadSpec(url, duration_s=1, max_requests=1))
    allowed = check_target("http://192.0.2.10:81/p?q=1", allowed_hosts=("192.0.2.10",))
    assert (allowed.connect_host, allowed.port, allowed.path) == ("192.0.2.10", 81, "/p?q=1")
    local = check_target("http://localhost:9/")
    assert local.connect_host in ("127.0.0.1", "::1") and local.host == "localhost"  # pinned to loopback
    assert check_target("http://127.8.9.10/").connect_host == "127.8.9.10"
    with pytest.raises(ValueError, match="http://"):
        check_target("https://127.0.0.1/")


def test_status_classes_counted_exactly(scripted: Served) -> None:
    result = run_load(LoadSpec(f"{scripted.url}/status/500", connections=3, max_requests=40, duration_s=10))
    assert _outcomes(result) == 40
    assert result.status_counts == {"500": 40} and result.errors_by_kind == {"http_5xx": 40}
    assert result.errors == 40 and result.ok == 0
    result = run_load(LoadSpec(f"{scripted.url}/status/404", connections=2, max_requests=9, duration_s=10))
    assert result.errors_by_kind == {"http_4xx": 9}


def test_peer_close_without_response_counted_as_closed(scripted: Served) -> None:
    result = run_load(LoadSpec(f"{scripted.url}/drop", connections=2, max_requests=7, duration_s=10))
    assert _outcomes(result) == 7
    assert result.errors_by_kind == {"closed": 7} and result.connects == 7
    assert scripted.stats()["requests"] == 7  # the server did receive every one of them


def test_close_on_a_reused_connection_is_reported_apart_and_not_retried(scripted: Served) -> None:
    # one connection: request 1 answered, request 2 (reused connection) read and dropped, request 3 on a new one...
    result = run_load(LoadSpec(f"{scripted.url}/drop-second", connections=1, max_requests=6, duration_s=10))
    assert _outcomes(result) == 6
    assert result.status_counts == {"200": 3} and result.errors_by_kind == {"closed_on_reuse": 3}
    assert result.connects == 3 and result.idle_closes == 0
    assert scripted.stats()["requests"] == 6  # not retried: the server saw each request exactly once


def test_timeouts_counted_and_bounded(scripted: Served) -> None:
    started = time.monotonic()
    result = run_load(
        LoadSpec(f"{scripted.url}/delay/2000", connections=3, max_requests=3, duration_s=10, timeout_s=0.3)
    )
    assert time.monotonic() - started < 2.0  # the 2 s answers were not waited for
    assert result.errors_by_kind == {"timeout": 3} and _outcomes(result) == 3


def test_chunked_and_announced_close_are_not_errors(scripted: Served) -> None:
    chunked = run_load(LoadSpec(f"{scripted.url}/chunked", connections=2, max_requests=10, duration_s=10))
    assert chunked.status_counts == {"200": 10} and chunked.errors == 0 and chunked.connects == 2
    closing = run_load(LoadSpec(f"{scripted.url}/close", connections=2, max_requests=10, duration_s=10))
    assert closing.status_counts == {"200": 10} and closing.errors == 0
    assert closing.connects == 10 and closing.idle_closes == 0


def test_idle_keepalive_close_counted_apart_and_retried(scripted: Served) -> None:
    # one connection, 5 req/s: the server closes each idle connection 50 ms after answering, long before the next
    result = run_load(LoadSpec(f"{scripted.url}/idle-close", connections=1, rate=5, max_requests=4, duration_s=5))
    assert result.mode == "open" and _outcomes(result) == 4
    assert result.status_counts == {"200": 4} and result.errors == 0
    assert result.idle_closes == 3 and result.connects == 4
    assert scripted.stats()["requests"] == 4  # retried only because nothing had been sent: no duplicates


def test_post_with_body_headers_and_unique_request_ids(scripted: Served) -> None:
    body = b'{"hello": "world"}'
    result = run_load(
        LoadSpec(
            f"{scripted.url}/ok",
            method="POST",
            body=body,
            headers=(("X-Test", "yes"), ("Content-Type", "application/json")),
            connections=4,
            max_requests=120,
            duration_s=10,
        )
    )
    assert result.status_counts == {"200": 120}
    stats = scripted.stats()
    assert stats["requests"] == 120 and stats["ids"] == 120  # every X-Request-Id distinct
    assert stats["body_bytes"] == 120 * len(body) and stats["methods"] == {"POST": 120} and stats["custom"] == 120


def test_open_loop_follows_the_rate(nginx: Nginx) -> None:
    result = run_load(LoadSpec(f"{nginx.url}/ok", connections=4, rate=200, duration_s=1.0, max_requests=10_000))
    assert result.mode == "open" and result.target_rate == 200
    assert 190 <= _outcomes(result) <= 200 and result.errors == 0
    assert result.cpu_utilization < 0.9  # 200 req/s must not need a busy loop
    ramp = run_load(
        LoadSpec(f"{nginx.url}/ok", connections=4, shape=Ramp(0, 400, 1.0), duration_s=2, max_requests=10_000)
    )
    assert ramp.stop_reason == "shape_done" and 190 <= ramp.requests <= 200  # area of the ramp: 200


def test_multi_process_results_merge_and_add_up(nginx: Nginx) -> None:
    updates: list[Progress] = []
    result = run_load(
        LoadSpec(f"{nginx.url}/ok", connections=6, workers=2, max_requests=4001, duration_s=20),
        progress=updates.append,
    )
    assert result.workers == 2 and not result.worker_errors
    assert _outcomes(result) == 4001 and result.status_counts == {"200": 4001}
    assert result.instances == {"nginx-1": 4001} and result.connects == 6
    assert result.latency_histogram().total == 4001
    assert result.stop_reason == "max_requests" and updates  # progress merged from both workers


def test_instance_distribution_through_nginx_round_robin(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _start_scripted(tmp_path / "a", "web-a")
    second = _start_scripted(tmp_path / "b", "web-b")
    proxy = _start_nginx(tmp_path / "nginx", [first.port, second.port])
    try:
        result = run_load(LoadSpec(f"{proxy.url}/app", connections=1, max_requests=100, duration_s=20))
        assert result.status_counts == {"200": 100}
        assert result.instances == {"web-a": 50, "web-b": 50}  # one nginx worker: strict round robin
    finally:
        _stop(proxy.process, signal.SIGQUIT)
        _stop(first.process)
        _stop(second.process)


def test_nginx_reload_closes_idle_keepalives_counted_as_idle_close(nginx: Nginx) -> None:
    def reload_soon() -> None:
        time.sleep(0.7)
        os.kill(nginx.process.pid, signal.SIGHUP)  # graceful reload: old workers close idle keep-alives

    reloader = threading.Thread(target=reload_soon)
    reloader.start()
    result = run_load(LoadSpec(f"{nginx.url}/ok", connections=5, rate=50, duration_s=2.0, max_requests=1000))
    reloader.join()
    assert result.errors == 0, result.errors_by_kind
    assert result.idle_closes >= 1 and result.connects == 5 + result.idle_closes
    assert 95 <= result.requests <= 100


def test_spec_bounds_are_validated() -> None:
    url = "http://127.0.0.1:9/"
    for bad in (
        {"duration_s": 0},
        {"duration_s": 10_000},
        {"max_requests": 0},
        {"connections": 0},
        {"workers": 3, "connections": 2},
        {"rate": 10, "shape": Constant(1, 1)},
        {"method": "BREW"},
    ):
        with pytest.raises(ValueError):
            LoadSpec(url, **bad)  # type: ignore[arg-type]


def test_connect_errors_counted() -> None:
    port = free_port()  # nobody listens there
    result = run_load(LoadSpec(f"http://127.0.0.1:{port}/", connections=2, max_requests=5, duration_s=5))
    assert result.errors_by_kind == {"connect": 5} and _outcomes(result) == 5


SIGINT_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[3])
from actions.proving.loadgen import LoadSpec, run_load

if __name__ == "__main__":  # workers are spawned processes that re-import this file
    spec = LoadSpec(sys.argv[1], connections=2, duration_s=30, max_requests=50_000_000, workers=int(sys.argv[2]))
    result = run_load(spec, progress=lambda update: print("progress", update.requests, flush=True))
    print(json.dumps({"stop_reason": result.stop_reason, "requests": result.requests, "errors": result.worker_errors}))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_cancels_the_run_cleanly(nginx: Nginx, tmp_path: Path, workers: int) -> None:
    script = tmp_path / "sigint_run.py"
    script.write_text(SIGINT_SCRIPT)
    repo_root = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen(
        [sys.executable, str(script), f"{nginx.url}/ok", str(workers), repo_root], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the load is running once progress is reported
        assert first.startswith("progress"), first
        interrupted_at = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=15)
        assert time.monotonic() - interrupted_at < 3.0
    finally:
        _stop(process)
    assert process.returncode == 0
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["stop_reason"] == "cancelled" and summary["requests"] > 0 and summary["errors"] == []
