"""Instance health: poll ``/health`` (and ``/metrics`` when configured) of every replica and static target.

Targets are the store's replica table for every configured service (``<service>/<instance_id>``) plus
``config.static_targets`` (``<service>/<name>``, service ``static`` by default). One
:class:`collectors.http_client.HttpClient` keeps one HTTP/1.1 connection per target alive across cycles; its
in-flight limit bounds a cycle's concurrency. Not aiohttp: its request machinery cost ~150 µs of CPU per poll, most
of the collector's budget (docs/design-notes.md#load-generation; bench/bench_collectors.py measures the cycle
against a bare stream loop).

``normalise_health`` is pure and accepts every shape of docs/design-notes.md#health: IETF health+json, Spring Boot
Actuator, NestJS Terminus, the typical Express JSON and a plain-text 200.

Everything an instance sends is untrusted (docs/security.md): the health body is read up to ``HEALTH_BODY_LIMIT``
and the /metrics page up to ``METRICS_BODY_LIMIT`` (decompressed size included), both requests and the parsing
share the target's deadline, every text field kept is capped, and a JSON health body that does not parse is a
``fail`` with the reason. /metrics is read by :mod:`collectors.exposition`, which tokenises only the families kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec, TargetGone, rate
from collectors.clients import HTTP_MAX_IN_FLIGHT, CollectorClients
from collectors.exposition import scan
from collectors.http_client import HttpClient, HttpConnectError, HttpError, HttpTimeoutError
from core.config import FleetConfig
from core.samples import Sample

SOURCE = "instance"
RAW_TEXT_LIMIT = 16_384  # health_raw is for display; a runaway body must not bloat the store
HEALTH_BODY_LIMIT = 64 << 10  # health JSON is ~0.1-5 KiB; more is a broken or hostile endpoint
METRICS_BODY_LIMIT = 1 << 20  # a prom-client page is ~5-50 KiB
VERSION_LIMIT = 256
CHECK_NAME_LIMIT = 200
MAX_CHECKS = 100
REASON_LIMIT = 300
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

HEALTH_CODES = {"pass": 0, "warn": 1, "fail": 2, "draining": 3}
_WORDS: dict[str, str] = {
    "pass": "pass",
    "ok": "pass",
    "up": "pass",
    "healthy": "pass",
    "warn": "warn",
    "warning": "warn",
    "degraded": "warn",
    "unknown": "warn",
    "fail": "fail",
    "error": "fail",
    "down": "fail",
    "unhealthy": "fail",
    "critical": "fail",
    "shutting_down": "draining",
    "out_of_service": "draining",
    "draining": "draining",
}
_SEVERITY = {"pass": 0, "warn": 1, "draining": 2, "fail": 3}


class HealthReading(NamedTuple):
    status: str  # pass | warn | fail | draining
    http_status: int
    checks: dict[str, str]  # component name -> normalised status word
    version: str | None
    uptime_s: float | None
    memory_rss_bytes: float | None
    in_flight: float | None
    pool_total: float | None
    pool_idle: float | None
    pool_waiting: float | None
    raw: str
    extra: dict[str, Any]  # unknown top-level keys, kept for display
    reason: str | None = None  # why the body itself makes this a fail (unparseable JSON, not UTF-8, too deep)


def _word(value: object) -> str | None:
    if isinstance(value, bool):
        return "pass" if value else "fail"
    if not isinstance(value, str):
        return None
    return _WORDS.get(value.strip().lower().replace("-", "_").replace(" ", "_"))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                parsed = float(value)
            except ValueError:
                return None
            return parsed if math.isfinite(parsed) else None
        return None
    return float(value) if math.isfinite(value) else None


def _worst(words: Iterable[str]) -> str | None:
    found = [w for w in words if w in _SEVERITY]
    return max(found, key=_SEVERITY.__getitem__) if found else None


def _flatten_components(components: object, prefix: str, out: dict[str, str]) -> None:
    """Spring `components` (nested for composites) and Terminus `details`/`info`/`error` into name -> word."""
    if not isinstance(components, dict):
        return
    for name, body in components.items():
        if not isinstance(body, dict):
            continue
        full = f"{prefix}{name}"
        word = _word(body.get("status"))
        if word is not None:
            out[full] = word
        if isinstance(body.get("components"), dict):
            _flatten_components(body["components"], f"{full}/", out)


def _ietf_checks(checks: object, out: dict[str, str]) -> None:
    """IETF `checks`: {"component:measurement": [{"status": ...}, ...]} -> the worst status per key."""
    if not isinstance(checks, dict):
        return
    for name, entries in checks.items():
        items = entries if isinstance(entries, list) else [entries]
        words = [_word(item.get("status")) for item in items if isinstance(item, dict)]
        worst = _worst(w for w in words if w)
        if worst is not None:
            out[str(name)] = worst


_KNOWN_KEYS = {
    "status",
    "version",
    "releaseId",
    "serviceId",
    "instanceId",
    "description",
    "notes",
    "output",
    "checks",
    "components",
    "details",
    "info",
    "error",
    "uptime",
    "memory",
    "database",
    "inFlight",
    "in_flight",
    "draining",
    "links",
    "groups",
}


def normalise_health(status_code: int, content_type: str | None, body: str | bytes) -> HealthReading:
    """One reading from any common health response shape.

    The HTTP status decides first (>= 400 is fail) unless the body says the instance is draining
    (Terminus `shutting_down`, Spring `OUT_OF_SERVICE`, `draining: true`), which is more specific.
    """
    declared_json = bool(content_type) and "json" in str(content_type).lower()
    reason: str | None = None
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            text = body.decode("utf-8", "replace")
            if declared_json:  # JSON is UTF-8 (RFC 8259 §8.1): anything else is a broken endpoint
                reason = f"health body is not UTF-8 (byte {error.start})"
    else:
        text = body
    data: Any = None
    if reason is None and (declared_json or text.lstrip().startswith(("{", "["))):
        try:
            data = json.loads(text)
        except RecursionError:
            reason = "health JSON nested too deeply"
        except ValueError as error:
            if declared_json:
                reason = f"health JSON does not parse: {str(error)[:REASON_LIMIT]}"
    checks: dict[str, str] = {}
    extra: dict[str, Any] = {}
    version: str | None = None
    uptime = rss = in_flight = pool_total = pool_idle = pool_waiting = None
    body_word: str | None = None
    draining = False
    if isinstance(data, dict):
        body_word = _word(data.get("status"))
        draining = data.get("draining") is True or body_word == "draining"
        _ietf_checks(data.get("checks"), checks)
        _flatten_components(data.get("components"), "", checks)  # Spring Actuator
        _flatten_components(data.get("details"), "", checks)  # NestJS Terminus
        if not data.get("details"):
            _flatten_components(data.get("info"), "", checks)
            _flatten_components(data.get("error"), "", checks)
        raw_version = data.get("version") or data.get("releaseId")
        if isinstance(raw_version, str | int | float) and raw_version != "":
            version = str(raw_version)[:VERSION_LIMIT]
        uptime = _number(data.get("uptime"))
        memory = data.get("memory")
        if isinstance(memory, dict):
            rss = _number(memory.get("rss"))
        in_flight = _number(data.get("inFlight", data.get("in_flight")))
        database = data.get("database")
        pool = database.get("pool") if isinstance(database, dict) else None
        if isinstance(pool, dict):
            pool_total = _number(pool.get("totalCount", pool.get("total")))
            pool_idle = _number(pool.get("idleCount", pool.get("idle")))
            pool_waiting = _number(pool.get("waitingCount", pool.get("waiting")))
        extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
        if len(checks) > MAX_CHECKS or any(len(name) > CHECK_NAME_LIMIT for name in checks):
            checks = {name[:CHECK_NAME_LIMIT]: word for name, word in list(checks.items())[:MAX_CHECKS]}
    if reason is not None:
        status = "fail"
    elif draining:
        status = "draining"
    elif status_code >= 400:
        status = "fail"
    elif body_word is not None:
        status = body_word
    elif isinstance(data, dict) and (worst := _worst(checks.values())) is not None:
        status = worst  # no top-level status: the worst component decides
    else:
        status = "pass"  # a plain 200 (text or JSON without status) is a pass
    return HealthReading(
        status,
        status_code,
        checks,
        version,
        uptime,
        rss,
        in_flight,
        pool_total,
        pool_idle,
        pool_waiting,
        text[:RAW_TEXT_LIMIT],
        extra,
        reason,
    )


FAILING_TEXT_LIMIT = 300


def failing_checks(checks: dict[str, str]) -> list[str]:
    """Names of the checks that fail, then those that warn (bounded: names come from the instance)."""
    order = {"fail": 0, "warn": 1}
    bad = [(order[word], name[:100]) for name, word in checks.items() if word in order]
    return [name for _, name in sorted(bad)][:20]


class PromReading(NamedTuple):
    rss_bytes: float | None
    cpu_seconds_total: float | None
    event_loop_lag_s: float | None
    requests_total: float | None
    requests_5xx_total: float | None


_STATUS_LABELS = ("status_code", "code", "status")


KEPT_FAMILIES = (
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "nodejs_eventloop_lag_seconds",
    "eventloop_lag_seconds",
    "http_request_duration_seconds_count",
    "http_requests_total",
)
_FALLBACK_FAMILIES = {  # fallback -> the family preferred over it
    "eventloop_lag_seconds": "nodejs_eventloop_lag_seconds",
    "http_requests_total": "http_request_duration_seconds_count",
}
_PREFERRED_FAMILIES = tuple(name for name in KEPT_FAMILIES if name not in _FALLBACK_FAMILIES)


def parse_prometheus(text: str, deadline: float | None = None) -> PromReading:
    """The few series we chart from a prom-client style /metrics page (bounded: see collectors.exposition).

    ``deadline`` is a ``time.monotonic()`` value; raises ExpositionError (a ValueError) or TimeoutError.
    """
    rss = cpu = lag = None
    histogram_requests = counter_requests = 0.0
    histogram_5xx = counter_5xx = 0.0
    seen_histogram = seen_counter = False
    # the fallbacks (the other lag name, the plain counter) are only looked for when the preferred one is absent
    samples = scan(text, _PREFERRED_FAMILIES, deadline=deadline)
    found = {sample.name for sample in samples}
    fallbacks = [name for name, preferred in _FALLBACK_FAMILIES.items() if preferred not in found]
    if fallbacks:
        samples += scan(text, fallbacks, deadline=deadline)
    for sample in samples:
        name = sample.name
        if name == "process_resident_memory_bytes":
            rss = sample.value
        elif name == "process_cpu_seconds_total":
            cpu = sample.value
        elif name in ("nodejs_eventloop_lag_seconds", "eventloop_lag_seconds"):
            lag = sample.value if lag is None or name == "nodejs_eventloop_lag_seconds" else lag
        elif name == "http_request_duration_seconds_count":
            seen_histogram = True
            histogram_requests += sample.value
            if _is_5xx(sample.labels):
                histogram_5xx += sample.value
        elif name == "http_requests_total":
            seen_counter = True
            counter_requests += sample.value
            if _is_5xx(sample.labels):
                counter_5xx += sample.value
    if seen_histogram:
        return PromReading(rss, cpu, lag, histogram_requests, histogram_5xx)
    if seen_counter:
        return PromReading(rss, cpu, lag, counter_requests, counter_5xx)
    return PromReading(rss, cpu, lag, None, None)


def _is_5xx(labels: dict[str, str]) -> bool:
    return any(str(labels.get(name, "")).startswith("5") for name in _STATUS_LABELS)


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
