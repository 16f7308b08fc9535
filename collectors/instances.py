"""Instance health: poll ``/health`` (and ``/metrics`` when configured) of every replica and static target.

Targets are the store's replica table for every configured service (``<service>/<instance_id>``) plus
``config.static_targets`` (``<service>/<name>``, service ``static`` by default). One
:class:`collectors.http_client.HttpClient` keeps one HTTP/1.1 connection per target alive across cycles; its
in-flight limit bounds a cycle's concurrency. Not aiohttp: its request machinery cost ~150 µs of CPU per poll, most
of the collector's budget (docs/design-notes.md#load-generation; bench/bench_collectors.py measures the cycle
against a bare stream loop).

What the answers mean (``normalise_health`` for every health body shape of docs/design-notes.md#health,
``parse_prometheus`` for /metrics) is pure and lives in :mod:`collectors.instance_readings`.

Everything an instance sends is untrusted (docs/security.md): the health body is read up to ``HEALTH_BODY_LIMIT``
and the /metrics page up to ``METRICS_BODY_LIMIT`` (decompressed size included), both requests and the parsing
share the target's deadline, every text field kept is capped, and a JSON health body that does not parse is a
``fail`` with the reason. /metrics is read by :mod:`collectors.exposition`, which tokenises only the families kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec, TargetGone, rate
from collectors.clients import HTTP_MAX_IN_FLIGHT, CollectorClients
from collectors.http_client import HttpClient, HttpConnectError, HttpError, HttpTimeoutError
from collectors.instance_readings import (
    FAILING_TEXT_LIMIT,
    HEALTH_CODES,
    REASON_LIMIT,
    failing_checks,
    normalise_health,
    parse_prometheus,
)
from core.config import FleetConfig
from core.samples import Sample

SOURCE = "instance"
HEALTH_BODY_LIMIT = 64 << 10  # health JSON is ~0.1-5 KiB; more is a broken or hostile endpoint
METRICS_BODY_LIMIT = 1 << 20  # a prom-client page is ~5-50 KiB
TEXT_SAMPLES_EVERY_S = 60.0

REGISTRY = MetricRegistry(
    SOURCE,
    [
        UP,
        LATENCY,
        MetricSpec("http_status", "", "HTTP status of /health"),
        MetricSpec("health_status", "", "0 pass, 1 warn, 2 fail, 3 draining (text = word)"),
        MetricSpec("failing_checks", "count", "health checks not passing (text = their names, worst first)"),
        MetricSpec("uptime_s", "s", "process uptime reported by the health body"),
        MetricSpec("memory_rss_bytes", "bytes", "resident memory (health body or /metrics)"),
        MetricSpec("cpu_seconds_total", "s", "process CPU seconds (from /metrics)"),
        MetricSpec("cpu_percent", "percent", "CPU use between two polls, 100 = one core"),
        MetricSpec("event_loop_lag_s", "s", "event loop lag (nodejs_eventloop_lag_seconds or eventloop_lag_seconds)"),
        MetricSpec("in_flight", "count", "requests in progress"),
        MetricSpec("pool_total", "count", "database pool connections"),
        MetricSpec("pool_idle", "count", "idle database pool connections"),
        MetricSpec("pool_waiting", "count", "clients waiting for a database pool connection"),
        MetricSpec("version", "", "value 1, text = version"),
        MetricSpec("health_raw", "", "value 1, text = the health body"),
        MetricSpec("requests_total", "count", "HTTP requests served (from /metrics)"),
        MetricSpec("requests_5xx_total", "count", "HTTP requests answered 5xx (from /metrics)"),
    ],
)

class HealthBodyError(Exception):
    """The health body cannot be read (see HealthReading.reason): the target is reported down with this text."""


class MetricsPageError(Exception):
    """The /metrics page broke a bound or the format: the target is reported down with this text."""


class InstanceTarget(NamedTuple):
    key: str  # "<service>/<instance_id>"
    service: str
    base_url: str  # "http://127.0.0.1:9101"
    health_path: str
    metrics_path: str | None
    timeout_s: float
    instance_id: str | None = None  # set for replicas from the store's registry; None for static targets


# Replicas the collector polls. `dead` is polled too: a replica whose process died keeps its registry row until an
# action replaces or removes it, and its failing polls (up=0) are what turns it DOWN and fires instance_down
# within one or two intervals (docs/architecture.md, "Replica states on the dashboard"). `stopped` replicas were
# removed on purpose and are not polled.
_POLLED_STATES = ("starting", "running", "draining", "dead")


def discover_targets(config: FleetConfig, replicas: Callable[[str], Iterable[Any]] | None) -> list[InstanceTarget]:
    """Replicas of every service from the store's registry (not stopped) plus the static targets."""
    found: list[InstanceTarget] = []
    if replicas is not None:
        for service in config.services:
            for rec in replicas(service.name):
                if rec.state not in _POLLED_STATES:
                    continue
                found.append(
                    InstanceTarget(
                        f"{service.name}/{rec.instance_id}",
                        service.name,
                        f"http://{rec.host}:{rec.port}",
                        service.health.path,
                        service.health.metrics,
                        service.health.timeout_s,
                        rec.instance_id,
                    )
                )
    for static in config.static_targets:
        found.append(
            InstanceTarget(
                f"{static.service}/{static.name}",
                static.service,
                static.url.rstrip("/"),
                static.health_path,
                static.metrics_path,
                config.collectors.timeout_s,
            )
        )
    return found


class InstanceCollector(CollectorBase[InstanceTarget]):
    name = "instances"
    source = SOURCE
    registry = REGISTRY

    def __init__(
        self,
        config: FleetConfig | None = None,
        store: Any = None,
        max_connections: int = HTTP_MAX_IN_FLIGHT,  # the HTTP client's in-flight bound, when it makes its own
        fixed_targets: list[InstanceTarget] | None = None,
        clients: CollectorClients | None = None,
    ) -> None:
        super().__init__(config, clients, fixed_targets,
                         own_clients=lambda: CollectorClients(http_max_in_flight=max_connections))
        self.store = store
        self._cpu_previous: dict[str, tuple[float, float]] = {}
        # (target, metric) -> (monotonic time written, what it said): see _changed_or_due
        self._text_written: dict[tuple[str, str], tuple[float, str]] = {}

    def _changed_or_due(self, key: str, metric: str, identity: str) -> bool:
        """Text-carrying samples (value always 1) are written when they change or once a minute, not each cycle."""
        now = time.monotonic()
        previous = self._text_written.get((key, metric))
        if previous is not None and previous[1] == identity and now - previous[0] < TEXT_SAMPLES_EVERY_S:
            return False
        self._text_written[(key, metric)] = (now, identity)
        return True

    def targets(self) -> list[InstanceTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        if self.config is None:
            return []
        return discover_targets(self.config, self.store.replicas if self.store is not None else None)

    async def collect(self, target: InstanceTarget) -> list[Sample]:
        client = self.clients.http()
        ts = time.time()
        started = time.perf_counter()
        # one deadline for both requests and the parsing: a target costs at most its timeout, whatever it sends
        deadline = time.monotonic() + target.timeout_s
        try:
            response = await client.get(target.base_url + target.health_path, target.timeout_s, HEALTH_BODY_LIMIT)
        except (HttpError, TimeoutError, OSError):
            if self._removed(target):
                raise TargetGone(target.key) from None
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0
        status_code = response.status
        reading = normalise_health(status_code, response.headers.get("content-type"), response.body)
        key = target.key
        status = reading.status
        if reading.reason is not None:
            # An answer that cannot be read (a JSON content type that does not parse, is not UTF-8, nests too
            # deeply) is no usable answer: the runner reports up=0 with the reason (docs/security.md).
            raise HealthBodyError(f"health body unusable (HTTP {status_code}): {reading.reason}")
        # `up` is reachability: the instance answered. A failing health check is a different fault (often a
        # dependency's), recorded in health_status and failing_checks — never as "no answer" (docs/operations.md).
        failing = failing_checks(reading.checks)
        sample = REGISTRY.sample
        out = [
            sample(key, "up", 1, ts),
            sample(key, "latency_ms", latency_ms, ts),
            sample(key, "http_status", status_code, ts),
            sample(key, "health_status", HEALTH_CODES[status], ts, text=status),
            sample(key, "failing_checks", len(failing), ts, text=", ".join(failing)[:FAILING_TEXT_LIMIT] or None),
        ]
        # the raw body changes every poll (uptime, memory): it is rewritten when the status or a check changes
        if self._changed_or_due(key, "health_raw", f"{status}{reading.checks}" if reading.checks else status):
            out.append(sample(key, "health_raw", 1, ts, text=reading.raw))
        if reading.version is not None and self._changed_or_due(key, "version", reading.version):
            out.append(sample(key, "version", 1, ts, text=reading.version))
        for metric, value in (
            ("uptime_s", reading.uptime_s),
            ("memory_rss_bytes", reading.memory_rss_bytes),
            ("in_flight", reading.in_flight),
            ("pool_total", reading.pool_total),
            ("pool_idle", reading.pool_idle),
            ("pool_waiting", reading.pool_waiting),
        ):
            if value is not None:
                out.append(sample(key, metric, value, ts))
        if target.metrics_path:
            have_rss = reading.memory_rss_bytes is not None
            out.extend(await self._metrics(client, target, target.metrics_path, ts, deadline, have_rss=have_rss))
        return out

    def _removed(self, target: InstanceTarget) -> bool:
        """The replica left the registry (stopped by an action) after the scheduler last refreshed its targets."""
        if target.instance_id is None or self.store is None or self.fixed_targets is not None:
            return False
        try:
            records = self.store.replicas(target.service)
        except Exception:  # the store is briefly unavailable: report the failure as usual
            return False
        # same id on another port is a replacement (restart): the old address is gone as well
        return not any(r.instance_id == target.instance_id and f"http://{r.host}:{r.port}" == target.base_url
                       and r.state in _POLLED_STATES for r in records)

    async def _metrics(
        self, client: HttpClient, target: InstanceTarget, metrics_path: str, ts: float, deadline: float,
        have_rss: bool,
    ) -> list[Sample]:
        """A missing, failing or slow /metrics page costs the metrics only, never the health reading.

        A page that breaks a bound (over the size cap, a decompression bomb, not HTTP, unparseable, too many
        series, the deadline passed while parsing) is a hostile or broken target: it raises, so the runner reports
        ``up=0`` with the reason.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        try:
            response = await client.get(target.base_url + metrics_path, remaining, METRICS_BODY_LIMIT)
        except (HttpConnectError, HttpTimeoutError):
            return []
        except HttpError as error:
            raise MetricsPageError(f"metrics: {error}") from None
        if response.status != 200:
            return []
        try:
            prom = parse_prometheus(response.text(), deadline)
        except TimeoutError:
            raise MetricsPageError(f"metrics: parsing passed the {target.timeout_s:g}s deadline") from None
        except ValueError as error:
            raise MetricsPageError(f"metrics: {str(error)[:REASON_LIMIT]}") from None
        key = target.key
        sample = REGISTRY.sample
        out: list[Sample] = []
        if prom.rss_bytes is not None and not have_rss:
            out.append(sample(key, "memory_rss_bytes", prom.rss_bytes, ts))
        if prom.cpu_seconds_total is not None:
            out.append(sample(key, "cpu_seconds_total", prom.cpu_seconds_total, ts))
            per_second = rate(self._cpu_previous.get(key), prom.cpu_seconds_total, ts)
            self._cpu_previous[key] = (prom.cpu_seconds_total, ts)
            if per_second is not None:
                out.append(sample(key, "cpu_percent", per_second * 100.0, ts))
        if prom.event_loop_lag_s is not None:
            out.append(sample(key, "event_loop_lag_s", prom.event_loop_lag_s, ts))
        if prom.requests_total is not None:
            out.append(sample(key, "requests_total", prom.requests_total, ts))
        if prom.requests_5xx_total is not None:
            out.append(sample(key, "requests_5xx_total", prom.requests_5xx_total, ts))
        return out
