"""The scheduler end to end: real Store (SQLite in tmp), real HTTP targets and Redis, one job per target."""

from __future__ import annotations

import time
from pathlib import Path

from collectors import scheduler as scheduler_module
from collectors.scheduler import collect_once, start_embedded, stop_embedded
from core.config import parse_config
from core.store import Store
from tests.support import free_port
from tests.test_collectors_helpers import servers


def _config(tmp_path: Path, redis_url: str, prefix: str, ports: list[int]):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "state_dir": str(tmp_path / "run"),
            "services": [
                {"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}
            ],
            "redis": [{"name": "main", "url": redis_url, "queue_prefixes": [prefix], "queues": ["emails"]}],
            "store": {"url": f"sqlite:///{tmp_path}/fd.db"},
            "collectors": {"instances_s": 1, "bullmq_s": 1, "redis_s": 1, "timeout_s": 2},
            "static_targets": [
                {"name": f"s{i}", "url": f"http://127.0.0.1:{p}", "metrics_path": None} for i, p in enumerate(ports)
            ],
        },
        base_dir=tmp_path,
    )


def test_embedded_scheduler_writes_samples_and_is_single(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    ports = [free_port(), free_port()]
    dead_port = free_port()  # nobody listens: that target must not hold up the others
    config = _config(tmp_path, redis_url, redis_prefix, [*ports, dead_port])
    store = Store(config.store_url)
    health = {"/health": [200, "application/json", '{"status":"ok","uptime":1}']}
    try:
        with servers({p: health for p in ports}):
            first = start_embedded(config, store)
            assert start_embedded(config, store) is first  # idempotent: one scheduler per process
            job_ids = {job.id for job in first.scheduler.get_jobs()}
            assert {"instances:static/s0", "instances:static/s1", "instances:static/s2", "bullmq:main",
                    "redis:redis:main"} <= job_ids  # fmt: skip
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                ups = {(x.series.source, x.series.target): x.value for x in store.latest(metric="up")}
                if len(ups) >= 5:
                    break
                time.sleep(0.3)
            stop_embedded()
            assert scheduler_module._EMBEDDED is None
        ups = {(x.series.source, x.series.target): x for x in store.latest(metric="up")}
        assert ups[("instance", "static/s0")].value == 1 and ups[("instance", "static/s1")].value == 1
        assert ups[("instance", "static/s2")].value == 0 and ups[("instance", "static/s2")].text
        assert ups[("bullmq", "main")].value == 1 and ups[("redis", "redis:main")].value == 1
        firing = {x.series.target: x.value for x in store.latest(source="alert")}
        assert firing["instance_down/static/s2"] == 1 and firing["instance_down/static/s0"] == 0
        assert any(x.series.target == "instances/static/s0" for x in store.latest(source="collector"))
    finally:
        stop_embedded()
        store.close()


def test_collect_once_returns_every_collector(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    config = _config(tmp_path, redis_url, redis_prefix, [])
    samples = collect_once(config)
    sources = {s.source for s in samples}
    assert {"bullmq", "redis", "collector", "alert"} <= sources
