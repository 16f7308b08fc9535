"""Instance health: every health shape (pure), and real HTTP servers polled by the collector."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from collectors.instance_readings import normalise_health, parse_prometheus
from collectors.instances import InstanceCollector, InstanceTarget
from collectors.runner import Runner
from tests.support import free_port
from tests.test_collectors_helpers import servers, start_server, stop

IETF = {
    "status": "pass", "version": "1.4.2", "serviceId": "web", "instanceId": "web-1", "uptime": 12.5, "inFlight": 2,
    "draining": False, "memory": {"rss": 52_000_000, "heapUsed": 1},
    "database": {"pool": {"totalCount": 10, "idleCount": 7, "waitingCount": 1, "max": 10}},
    "checks": {"postgres:responseTime": [{"componentType": "datastore", "observedValue": 2, "status": "pass"}],
               "redis:responseTime": [{"status": "warn"}]},
}  # fmt: skip
SPRING = {"status": "UP", "components": {"db": {"status": "UP", "details": {"database": "PostgreSQL"}},
          "diskSpace": {"status": "UP"}, "ping": {"status": "UP"},
          "composite": {"status": "DOWN", "components": {"inner": {"status": "DOWN"}}}}}  # fmt: skip
TERMINUS_SHUTDOWN = {"status": "shutting_down", "info": {}, "error": {},
                     "details": {"database": {"status": "up"}, "memory_heap": {"status": "down"}}}  # fmt: skip
EXPRESS = {"status": "ok", "uptime": 3600.2, "memory": {"rss": 80_000_000, "heapUsed": 30_000_000},
           "database": {"pool": {"totalCount": 5, "idleCount": 4, "waitingCount": 0}}}  # fmt: skip


def test_ietf_health_json() -> None:
    r = normalise_health(200, "application/health+json", json.dumps(IETF))
    assert r.status == "pass" and r.version == "1.4.2" and r.uptime_s == 12.5 and r.in_flight == 2
    assert r.memory_rss_bytes == 52_000_000
    assert (r.pool_total, r.pool_idle, r.pool_waiting) == (10, 7, 1)
    assert r.checks == {"postgres:responseTime": "pass", "redis:responseTime": "warn"}


def test_ietf_draining_and_aliases() -> None:
    assert normalise_health(200, "application/health+json", '{"status":"warn","draining":true}').status == "draining"
    assert normalise_health(200, "application/json", '{"status":"UP"}').status == "pass"
    assert normalise_health(200, "application/json", '{"status":"error"}').status == "fail"


def test_spring_actuator_flattens_components() -> None:
    r = normalise_health(200, "application/vnd.spring-boot.actuator.v3+json", json.dumps(SPRING))
    assert r.status == "pass"
    assert r.checks == {
        "db": "pass",
        "diskSpace": "pass",
        "ping": "pass",
        "composite": "fail",
        "composite/inner": "fail",
    }
    down = normalise_health(503, "application/json", '{"status":"DOWN"}')
    assert down.status == "fail"
    out_of_service = normalise_health(503, "application/json", '{"status":"OUT_OF_SERVICE"}')
    assert out_of_service.status == "draining"


def test_terminus_shutting_down_and_error() -> None:
    r = normalise_health(503, "application/json", json.dumps(TERMINUS_SHUTDOWN))
    assert r.status == "draining"
    assert r.checks == {"database": "pass", "memory_heap": "fail"}
    error = {"status": "error", "info": {}, "error": {"db": {"status": "down"}}, "details": {"db": {"status": "down"}}}
    assert normalise_health(503, "application/json", json.dumps(error)).status == "fail"


def test_express_json_and_plain_text() -> None:
    r = normalise_health(200, "application/json; charset=utf-8", json.dumps(EXPRESS))
    assert r.status == "pass" and r.uptime_s == 3600.2 and r.memory_rss_bytes == 80_000_000
    assert (r.pool_total, r.pool_idle, r.pool_waiting) == (5, 4, 0)
    plain = normalise_health(200, "text/plain", b"OK")
    assert plain.status == "pass" and plain.checks == {} and plain.raw == "OK"
    assert normalise_health(500, "text/html", "<h1>boom</h1>").status == "fail"
    assert normalise_health(200, "application/json", '{"status":"ok","custom":1}').extra == {"custom": 1}


METRICS = """# HELP process_cpu_seconds_total cpu
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 61000000
# TYPE nodejs_eventloop_lag_seconds gauge
nodejs_eventloop_lag_seconds 0.0042
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/",status_code="200"} 90
http_request_duration_seconds_count{method="GET",route="/",status_code="200"} 90
http_request_duration_seconds_sum{method="GET",route="/",status_code="200"} 1.0
http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/",status_code="502"} 10
http_request_duration_seconds_count{method="GET",route="/",status_code="502"} 10
http_request_duration_seconds_sum{method="GET",route="/",status_code="502"} 1.0
"""


def test_parse_prometheus_prom_client_names() -> None:
    p = parse_prometheus(METRICS)
    assert (p.rss_bytes, p.cpu_seconds_total, p.event_loop_lag_s) == (61_000_000, 12.5, 0.0042)
    assert (p.requests_total, p.requests_5xx_total) == (100, 10)
    python_app = parse_prometheus("# TYPE eventloop_lag_seconds gauge\neventloop_lag_seconds 0.01\n")
    assert python_app.event_loop_lag_s == 0.01 and python_app.requests_total is None


def _routes(body: object, ctype: str = "application/json", status: int = 200) -> dict[str, list[object]]:
    text = body if isinstance(body, str) else json.dumps(body)
    return {"/health": [status, ctype, text], "/metrics": [200, "text/plain; version=0.0.4", METRICS]}


def _by_target(samples: list) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for s in samples:
        out.setdefault(s.target, {})[s.metric] = s
    return out


def test_real_servers_each_shape_then_kill_and_revive() -> None:
    shapes = {
        "ietf": _routes(IETF, "application/health+json"),
        "spring": _routes(SPRING),
        "terminus": _routes(TERMINUS_SHUTDOWN, status=503),
        "express": _routes(EXPRESS),
        "plain": _routes("OK", "text/plain"),
    }
    ports = {name: free_port() for name in shapes}
    targets = [
        InstanceTarget(f"web/{name}", "web", f"http://127.0.0.1:{ports[name]}", "/health", "/metrics", 2.0)
        for name in shapes
    ]
    collector = InstanceCollector(fixed_targets=targets)
    runner = Runner(timeout_s=3)

    async def cycle() -> dict[str, dict[str, object]]:
        return _by_target(await runner.run_many(collector, collector.targets()))

    async def scenario() -> None:
        with servers({ports[name]: routes for name, routes in shapes.items()}) as procs:
            first = await cycle()
            assert first["web/ietf"]["up"].value == 1 and first["web/ietf"]["health_status"].value == 0
            assert first["web/ietf"]["version"].text == "1.4.2"
            assert first["web/ietf"]["pool_waiting"].value == 1
            assert json.loads(first["web/ietf"]["health_raw"].text)["serviceId"] == "web"
            assert first["web/terminus"]["health_status"].text == "draining"
            assert first["web/plain"]["health_status"].text == "pass"
            assert first["web/express"]["requests_5xx_total"].value == 10
            assert first["web/express"]["event_loop_lag_s"].value == 0.0042
            assert "cpu_percent" not in first["web/express"]  # needs two readings
            second = await cycle()
            assert second["web/express"]["cpu_percent"].value == 0.0  # same counter twice: 0 %, a real delta
            stop(procs[ports["express"]])
            down = await cycle()
            assert down["web/express"]["up"].value == 0
            assert "Connect" in down["web/express"]["up"].text
            assert all(down[f"web/{n}"]["up"].value == 1 for n in ("ietf", "spring", "plain"))
            procs[ports["express"]] = start_server(ports["express"], shapes["express"])
            back = await cycle()
            assert back["web/express"]["up"].value == 1
        await collector.aclose()

    asyncio.run(scenario())


def test_hanging_server_times_out_while_others_answer() -> None:
    """A listening socket that never answers (accepts, reads nothing) is the realistic hang."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    good_port = free_port()
    targets = [
        InstanceTarget("web/silent", "web", f"http://127.0.0.1:{silent.getsockname()[1]}", "/health", None, 0.5),
        InstanceTarget("web/good", "web", f"http://127.0.0.1:{good_port}", "/health", None, 0.5),
    ]
    collector = InstanceCollector(fixed_targets=targets)

    async def scenario() -> dict[str, dict[str, object]]:
        try:
            return _by_target(await Runner(timeout_s=1).run_many(collector, targets))
        finally:
            await collector.aclose()

    try:
        with servers({good_port: _routes(EXPRESS)}):
            result = asyncio.run(scenario())
    finally:
        silent.close()
    assert result["web/silent"]["up"].value == 0 and "timeout" in result["web/silent"]["up"].text.lower()
    assert result["web/good"]["up"].value == 1


def test_dead_replica_is_polled_down_and_a_removed_one_writes_nothing(tmp_path: Path) -> None:
    """A replica the backend marked `dead` keeps being polled (up=0, so instance_down fires); one an action
    removed from the registry between target refreshes writes no sample at all (a planned removal is not an
    outage). No mock: nothing listens on the dead replica's port, the store is real SQLite."""
    from collectors.alerts import AlertEvaluator
    from core.config import load_config
    from core.store import ReplicaRecord, Store

    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(
        f'services:\n  - name: web\n    command: "true {{port}}"\n    ports: {{start: 20000, end: 20010}}\n'
        f'store: {{url: "sqlite:///{tmp_path / "fd.db"}"}}\n'
    )
    config = load_config(config_file)
    store = Store(config.store_url)
    dead_port, removed_port = free_port(), free_port()
    now = time.time()
    store.upsert_replica(ReplicaRecord("web", "web-1", "local", "127.0.0.1", dead_port, 1, "dead", now, "1"))
    store.upsert_replica(ReplicaRecord("web", "web-2", "local", "127.0.0.1", removed_port, 2, "running", now, "2"))
    collector = InstanceCollector(config, store)
    targets = {t.key: t for t in collector.targets()}
    assert set(targets) == {"web/web-1", "web/web-2"}
    store.remove_replica("web", "web-2")  # a scale-down stopped it after the scheduler read its targets

    async def scenario() -> list[object]:
        try:
            return await Runner(timeout_s=2).run_many(collector, list(targets.values()))
        finally:
            await collector.aclose()

    samples = asyncio.run(scenario())
    by_target = _by_target([s for s in samples if s.source == "instance"])
    assert by_target["web/web-1"]["up"].value == 0
    assert "web/web-2" not in by_target
    alerts = {s.target: s for s in AlertEvaluator().evaluate(samples)}
    assert alerts["instance_down/web/web-1"].value == 1
    assert "instance_down/web/web-2" not in alerts
    store.close()


def test_text_fields_are_capped_and_unusable_json_is_a_fail_with_its_reason() -> None:
    long_version = normalise_health(200, "application/json", json.dumps({"status": "ok", "version": "v" * 100_000}))
    assert long_version.status == "pass" and long_version.version == "v" * 256
    assert len(long_version.raw) == 16_384
    many = {"status": "ok", "checks": {f"c{i}" + "x" * 300: [{"status": "pass"}] for i in range(500)}}
    capped = normalise_health(200, "application/health+json", json.dumps(many))
    assert len(capped.checks) == 100 and max(len(name) for name in capped.checks) == 200
    assert normalise_health(200, "application/json", '{"status": "ok", "version": {"nested": 1}}').version is None
    broken = normalise_health(200, "application/json; charset=utf-8", '{"status": "ok",')
    assert broken.status == "fail" and broken.reason is not None and "does not parse" in broken.reason
    not_utf8 = normalise_health(200, "application/json", b'{"status": "ok", "v": "\xff"}')
    assert not_utf8.status == "fail" and "not UTF-8" in (not_utf8.reason or "")
    deep = normalise_health(200, "application/json", "[" * 50_000 + "]" * 50_000)
    assert deep.status == "fail" and "nested too deeply" in (deep.reason or "")
    # without a JSON content type a body that merely looks like JSON stays a plain-text answer (lenient, as before)
    assert normalise_health(200, "text/plain", "{not json").status == "pass"
