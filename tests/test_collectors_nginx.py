"""nginx collector: a real nginx (own prefix, free port) in front of real backends; NGINX Plus from a recording."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from collectors.nginx import LogTailer, NginxCollector, NginxTarget, aggregate_log_lines, parse_stub_status
from collectors.runner import Runner
from tests.support import free_port, wait_http
from tests.test_collectors_helpers import servers, start_server, stop

NGINX = "/usr/sbin/nginx"
LOG_FORMAT = (
    """'{"t":$msec,"rid":"$request_id","pid":$pid,"ua":"$upstream_addr","us":"$upstream_status","""
    """"urt":"$upstream_response_time","rt":$request_time,"s":$status,"m":"$request_method"}'"""
)


def _conf(prefix: Path, port: int, backends: list[int]) -> str:
    servers_block = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in backends)
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format fleet escape=json {LOG_FORMAT};
  access_log {prefix}/logs/access.json.log fleet;
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
  uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  upstream web {{
{servers_block}
  }}
  server {{
    listen 127.0.0.1:{port};
    location = /nginx_status {{ stub_status; access_log off; }}
    location / {{ proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_per_server_counts_rates_and_rotation(tmp_path: Path) -> None:
    backends = [free_port() for _ in range(3)]
    bad = backends[2]
    routes = {p: {"*": [200, "text/plain", "ok"]} for p in backends[:2]}
    routes[bad] = {"*": [500, "text/plain", "boom"]}
    (tmp_path / "logs").mkdir()
    (tmp_path / "tmp").mkdir()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_conf(tmp_path, port, backends))
    upstream_json = tmp_path / "upstream.json"
    upstream_json.write_text(
        json.dumps(
            {"generation": 3, "applied_at": time.time(), "servers": [
                {"address": f"127.0.0.1:{backends[0]}", "state": "up", "instance_id": "web-1"},
                {"address": f"127.0.0.1:{backends[1]}", "state": "draining", "instance_id": "web-2"},
                {"address": f"127.0.0.1:{bad}", "state": "up", "instance_id": "web-3"},
            ]}
        )
    )  # fmt: skip
    log_path = tmp_path / "logs" / "access.json.log"
    with servers(routes):
        nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])
        try:
            wait_http(f"http://127.0.0.1:{port}/nginx_status", timeout_s=15)
            target = NginxTarget(
                "nginx:web", f"http://127.0.0.1:{port}/nginx_status", str(log_path), str(upstream_json), None, 3.0
            )
            collector = NginxCollector(fixed_targets=[target])
            runner = Runner(timeout_s=5)
            loop = asyncio.new_event_loop()
            ticks: list[list] = []

            def tick() -> None:
                ticks.append(loop.run_until_complete(runner.run(collector, target)))

            tick()  # positions the tail at the end of the log
            statuses = [_get(f"http://127.0.0.1:{port}/r{i}") for i in range(30)]
            tick()
            statuses += [_get(f"http://127.0.0.1:{port}/s{i}") for i in range(15)]
            os.rename(log_path, tmp_path / "logs" / "access.json.log.1")  # logrotate's rename ...
            statuses += [_get(f"http://127.0.0.1:{port}/t{i}") for i in range(9)]  # ... still to the old file
            subprocess.run([NGINX, "-p", str(tmp_path), "-c", str(conf), "-s", "reopen"], check=True)
            statuses += [_get(f"http://127.0.0.1:{port}/u{i}") for i in range(6)]
            tick()
            time.sleep(0.3)
            tick()
            loop.run_until_complete(collector.aclose())
            loop.close()
        finally:
            nginx.terminate()
            nginx.wait(10)
    n = len(statuses)
    assert n == 60 and statuses.count(500) == 20  # round robin over 3: the bad backend served a third
    assert all(s[0].metric == "up" and s[0].value == 1 for s in ticks)
    per_server: dict[str, float] = {}
    for samples in ticks[1:]:
        for s in samples:
            if s.metric == "requests":
                per_server[s.target] = per_server.get(s.target, 0) + s.value
    assert sum(per_server.values()) == n  # no line lost or double counted across the rotation
    assert per_server == {f"nginx:web/127.0.0.1:{p}": 20 for p in backends}
    second = {(s.target, s.metric): s for s in ticks[1]}
    assert second[(f"nginx:web/127.0.0.1:{bad}", "status_5xx_per_s")].value > 0
    assert second[(f"nginx:web/127.0.0.1:{backends[0]}", "status_5xx_per_s")].value == 0
    assert second[(f"nginx:web/127.0.0.1:{backends[1]}", "server_state")].text == "draining"
    assert second[(f"nginx:web/127.0.0.1:{backends[1]}", "server_state")].value == 1
    # every request of that tick reached a real backend, so its upstream time is positive and, on loopback, small
    assert 0 < second[(f"nginx:web/127.0.0.1:{bad}", "upstream_p95_ms")].value < 5000
    assert second[("nginx:web", "requests_per_s")].value > 0
    assert second[("nginx:web", "requests_total")].value >= 30


def test_failed_attempts_from_upstream_addr_list() -> None:
    lines = [
        b'{"ua":"127.0.0.1:1, 127.0.0.1:2","us":"502, 200","urt":"0.001, 0.004","s":200}',
        b'{"ua":"127.0.0.1:2","us":"404","urt":"0.002","s":404}',
        b'{"ua":"web","us":"502","urt":"0.000","s":502}',  # no server could be picked
        b'{"ua":"","us":"","urt":"","s":200}',
        b"not json",
    ]
    stats, bad = aggregate_log_lines(lines)
    assert bad == 1
    assert stats["127.0.0.1:1"].failed_attempts == 1 and stats["127.0.0.1:1"].requests == 0
    assert stats["127.0.0.1:2"].requests == 2 and stats["127.0.0.1:2"].status_4xx == 1
    assert stats["127.0.0.1:2"].times_ms == [4.0, 2.0]


def test_tailer_partial_line_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"old\n")
    tailer = LogTailer(path)
    assert tailer.read_lines() == []  # starts at the end
    with open(path, "ab") as f:
        f.write(b"one\ntw")
    assert tailer.read_lines() == [b"one"]
    with open(path, "ab") as f:
        f.write(b"o\n")
    assert tailer.read_lines() == [b"two"]
    path.write_bytes(b"x\n")  # truncated (copytruncate) and rewritten, shorter than our offset
    assert tailer.read_lines() == [b"x"]
    tailer.close()


def test_stub_status_parse() -> None:
    text = "Active connections: 2 \nserver accepts handled requests\n 10 11 12 \nReading: 0 Writing: 1 Waiting: 1 \n"
    assert tuple(parse_stub_status(text)) == (2, 10, 11, 12, 0, 1, 1)


PLUS_RECORDING = {  # shape recorded from NGINX Plus R30 /api/9/http/upstreams (trimmed)
    "web": {
        "peers": [
            {"id": 0, "server": "10.0.0.1:9101", "name": "10.0.0.1:9101", "backup": False, "weight": 1,
             "state": "up", "active": 1, "requests": 1000, "header_time": 3, "response_time": 4,
             "responses": {"1xx": 0, "2xx": 990, "3xx": 0, "4xx": 6, "5xx": 4, "codes": {"200": 990}, "total": 1000},
             "sent": 1, "received": 1, "fails": 2, "unavail": 0,
             "health_checks": {"checks": 0, "fails": 0, "unhealthy": 0}, "downtime": 0},
            {"id": 1, "server": "10.0.0.2:9101", "name": "10.0.0.2:9101", "backup": False, "weight": 1,
             "state": "draining", "active": 0, "requests": 500,
             "responses": {"1xx": 0, "2xx": 500, "3xx": 0, "4xx": 0, "5xx": 0, "total": 500}, "fails": 0},
        ],
        "keepalive": 0, "zombies": 0, "zone": "web",
    }
}  # fmt: skip


def test_plus_api_from_a_real_http_server_serving_a_recording() -> None:
    """No NGINX Plus here: a real HTTP server serves a recorded /api/9/http/upstreams answer, twice."""
    port = free_port()
    later = json.loads(json.dumps(PLUS_RECORDING))
    peer = later["web"]["peers"][0]
    peer["requests"], peer["responses"]["5xx"], peer["fails"] = 1100, 14, 5
    target = NginxTarget("nginx:web", None, None, None, f"http://127.0.0.1:{port}/api", 3.0)
    collector = NginxCollector(fixed_targets=[target])
    runner = Runner(timeout_s=5)
    loop = asyncio.new_event_loop()
    try:
        proc = start_server(port, {"/api/9/http/upstreams": [200, "application/json", json.dumps(PLUS_RECORDING)]})
        first = loop.run_until_complete(runner.run(collector, target))
        stop(proc)
        proc = start_server(port, {"/api/9/http/upstreams": [200, "application/json", json.dumps(later)]})
        second = loop.run_until_complete(runner.run(collector, target))
        stop(proc)
        loop.run_until_complete(collector.aclose())
    finally:
        loop.close()
    states = {s.target: s for s in first if s.metric == "server_state"}
    assert states["nginx:web/10.0.0.2:9101"].value == 1 and states["nginx:web/10.0.0.1:9101"].value == 0
    got = {(s.target, s.metric): s.value for s in second}
    assert got[("nginx:web/10.0.0.1:9101", "requests_per_s")] > 0
    assert got[("nginx:web/10.0.0.1:9101", "status_5xx_per_s")] > 0
    assert got[("nginx:web/10.0.0.1:9101", "failed_attempts")] == 3
    assert got[("nginx:web/10.0.0.2:9101", "requests_per_s")] == 0
