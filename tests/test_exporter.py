"""Prometheus out: the real collector process serves /metrics; a scrape parses with prometheus_client's parser."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from collectors.exporter import SampleExporter
from core.config import parse_config
from core.samples import Sample
from tests.support import free_port
from tests.support_collector import start_collector, stop_collector, wait_for, write_collector_config
from tests.test_collectors_helpers import servers

# Strings from outside that must come out as plain label values: quotes, backslashes, a newline, braces.
WEIRD_QUEUE = 'we"ird\\q\n{x="1"}'
WEIRD_APP = 'evil" app\\{le="+Inf"}'


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    parsed: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return parsed


def test_collector_process_serves_every_latest_sample(tmp_path: Path, pg_dsn: str, redis_url: str,
                                                      redis_prefix: str) -> None:
    live_port, dead_port, metrics_port = free_port(), free_port(), free_port()
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{redis_prefix}:{WEIRD_QUEUE}:meta", "opts.maxLenEvents", "10000")
    client.rpush(f"{redis_prefix}:{WEIRD_QUEUE}:wait", "1", "2", "3")
    config = write_collector_config(tmp_path, {
        "redis": [{"name": "main", "url": redis_url, "queue_prefixes": [redis_prefix]}],
        "postgres": [{"name": "main", "dsn": pg_dsn}],
        "static_targets": [{"name": "s0", "url": f"http://127.0.0.1:{live_port}", "metrics_path": None},
                           {"name": "gone", "url": f"http://127.0.0.1:{dead_port}", "metrics_path": None}],
        "prometheus": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
    })
    health = {"/health": [200, "application/json", '{"status":"pass","uptime":1}']}
    with servers({live_port: health}), psycopg.connect(pg_dsn, application_name=WEIRD_APP):
        proc = start_collector(config, tmp_path / "collect.log")
        try:
            def ready() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                metrics = scrape(metrics_port)
                wanted = ("fleetdeck_instance_up", "fleetdeck_bullmq_waiting", "fleetdeck_postgres_connections",
                          "fleetdeck_collect_errors_total", "fleetdeck_alert_firing")
                return metrics if all(name in metrics for name in wanted) else None

            metrics = wait_for(ready, 30, "a scrape with instance, bullmq, postgres, self and alert metrics")
        finally:
            assert stop_collector(proc) == 0
    ups = {labels["target"]: value for labels, value in metrics["fleetdeck_instance_up"]}
    assert ups["static/s0"] == 1 and ups["static/gone"] == 0
    waiting = {labels["target"]: value for labels, value in metrics["fleetdeck_bullmq_waiting"]}
    assert waiting[f"main/{redis_prefix}:{WEIRD_QUEUE}"] == 3  # the hostile queue name round-trips exactly
    applications = {labels["application"] for labels, _ in metrics["fleetdeck_postgres_connections"]}
    assert WEIRD_APP in applications
    errors = {labels["target"]: value for labels, value in metrics["fleetdeck_collect_errors_total"]
              if labels["collector"] == "instances"}
    assert errors["static/gone"] >= 1 and errors["static/s0"] == 0
    durations = [labels for labels, _ in metrics["fleetdeck_collect_duration_seconds"]]
    assert {"collector": "redis", "target": "redis:main"} in durations
    firing = {labels["target"]: value for labels, value in metrics["fleetdeck_alert_firing"]}
    assert firing["instance_down/static/gone"] == 1
    assert metrics["fleetdeck_flushes_total"][0][1] >= 1
    client.close()


def test_metrics_endpoint_is_loopback_and_off_unless_enabled() -> None:
    config = parse_config({"services": [{"name": "web", "command": "x {port} {instance_id}",
                                         "ports": {"start": 20000, "end": 20010}}]})
    assert config.prometheus.enabled is False
    assert config.prometheus.listen.startswith("127.0.0.1:")


def test_exporter_bounds_label_values_and_drops_stale_series() -> None:
    exporter = SampleExporter(max_age_s=60)
    now = time.time()
    exporter.update([
        Sample("instance", "web/" + "x" * 5000, "up", 1, now, "bool"),
        Sample("instance", "web/old", "up", 1, now - 3600, "bool"),
        Sample("instance", "web/v", "version", 1, now, "", (), "1.2.3"),
    ])
    families = {family.name: family for family in exporter.collect()}
    targets = [s.labels["target"] for s in families["fleetdeck_instance_up"].samples]
    assert len(targets) == 1 and len(targets[0]) <= 256  # bounded; the hour-old series left the scrape
    assert families["fleetdeck_instance_version"].samples[0].labels["text"] == "1.2.3"
