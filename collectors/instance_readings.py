"""What an instance's answers mean, as pure functions: ``normalise_health`` reads every health body shape of
docs/design-notes.md#health (IETF health+json, Spring Boot Actuator, NestJS Terminus, the typical Express JSON, a
plain-text 200) into one :class:`HealthReading`; ``parse_prometheus`` reads the few series we chart from a
prom-client style /metrics page (bounded: collectors/exposition.py). Every text kept is capped: the bodies come
from the instance and are untrusted (docs/security.md). The collector that polls is collectors/instances.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from collectors.exposition import scan

RAW_TEXT_LIMIT = 16_384  # health_raw is for display; a runaway body must not bloat the store
VERSION_LIMIT = 256
CHECK_NAME_LIMIT = 200
MAX_CHECKS = 100
REASON_LIMIT = 300

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
