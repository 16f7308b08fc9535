"""Prometheus out: the collector process serves ``/metrics`` with every latest sample it collected.

Teams that run Prometheus + Grafana scrape fleetdeck instead of running one exporter per source (docs/prometheus.md).
The scheduler hands every flushed batch to :meth:`SampleExporter.update`; a scrape renders the newest value of each
series as a gauge named ``fleetdeck_<source>_<metric>`` with the sample's target and labels as Prometheus labels.
Label values come from outside (instance ids, queue names, Postgres application names): they are only ever label
values, escaped by ``prometheus_client``, and bounded in length here. Series not refreshed for ``max_age_s`` are
dropped, so a removed replica disappears from the scrape instead of being reported forever.

The process's own work is exported too: per (collector, target) the last collection's duration, the number of
failed collections (a counter) and the time of the last success; per flush the batch write duration and the
number of failed store writes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.samples import Sample

log = logging.getLogger(__name__)

PREFIX = "fleetdeck"
MAX_LABEL_VALUE = 256  # a label value is an untrusted string: bounded so one series cannot blow up a scrape
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED_LABELS = frozenset({"target", "collector"})
# Metrics whose text is the interesting part (value is always 1): exported as an extra `text` label.
_INFO_TEXT_METRICS = frozenset({"version", "maxmemory_policy"})


def metric_name(*parts: str) -> str:
    """A valid Prometheus metric name from fleetdeck's names (anything outside [a-zA-Z0-9_] becomes `_`)."""
    name = "_".join(_INVALID_NAME_CHARS.sub("_", part) for part in parts if part)
    return name if not name[:1].isdigit() else f"_{name}"


def label_name(key: str) -> str:
    name = _INVALID_NAME_CHARS.sub("_", key) or "label"
    if name[:1].isdigit() or name.startswith("__"):
        name = f"l_{name.lstrip('_')}"
    return f"label_{name}" if name in _RESERVED_LABELS else name


def bounded(value: str | None) -> str:
    text = value or ""
    return text if len(text) <= MAX_LABEL_VALUE else text[: MAX_LABEL_VALUE - 1] + "…"


SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


class SampleExporter:
    """The newest sample of every series plus the process's flush statistics, rendered on scrape.

    Thread-safe: the flush job writes, the HTTP server thread reads.
    """

    def __init__(self, max_age_s: float = 300.0) -> None:
        self.max_age_s = max_age_s
        self._latest: dict[SeriesKey, Sample] = {}
        self._lock = threading.Lock()
        self.flushes_total = 0
        self.flush_errors_total = 0
        self.last_flush_duration_s = 0.0
        self.last_flush_samples = 0

    def update(self, samples: Iterable[Sample]) -> None:
        with self._lock:
            for sample in samples:
                key = (sample.source, sample.target, sample.metric, sample.labels)
                known = self._latest.get(key)
                if known is None or sample.ts >= known.ts:
                    self._latest[key] = sample

    def record_flush(self, duration_s: float, samples: int, ok: bool) -> None:
        with self._lock:
            self.flushes_total += 1
            self.flush_errors_total += 0 if ok else 1
            self.last_flush_duration_s = duration_s
            self.last_flush_samples = samples

    def _snapshot(self, now: float) -> list[Sample]:
        with self._lock:
            stale = [key for key, s in self._latest.items() if now - s.ts > self.max_age_s]
            for key in stale:
                del self._latest[key]
            return list(self._latest.values())

    # -- the prometheus_client custom-collector protocol ------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        samples = self._snapshot(time.time())
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        label_sets: dict[str, set[tuple[str, ...]]] = {}
        for sample in sorted(samples, key=lambda s: (s.source, s.metric, s.target, s.labels)):
            family, values = self._family_of(sample, families)
            if family is None:
                continue
            seen = label_sets.setdefault(family.name, set())
            if tuple(values) in seen:  # two fleetdeck label sets that sanitize to the same Prometheus labels
                continue
            seen.add(tuple(values))
            family.add_metric(values, self._value_of(sample))
        yield from families.values()
        yield from self._self_families()

    def _family_of(
        self, sample: Sample, families: dict[str, GaugeMetricFamily | CounterMetricFamily]
    ) -> tuple[GaugeMetricFamily | CounterMetricFamily | None, list[str]]:
        if sample.source == "collector":
            return self._collector_family(sample, families)
        names = ["target", *(label_name(k) for k, _ in sample.labels)]
        values = [bounded(sample.target), *(bounded(v) for _, v in sample.labels)]
        if sample.metric in _INFO_TEXT_METRICS:
            names.append("text")
            values.append(bounded(sample.text))
        name = metric_name(PREFIX, sample.source, sample.metric)
        family = families.get(name)
        if family is None:
            unit = f" ({sample.unit})" if sample.unit else ""
            family = GaugeMetricFamily(name, f"fleetdeck {sample.source} {sample.metric}{unit}", labels=names)
            families[name] = family
        elif list(family._labelnames) != names:  # same metric with another label set: keep the first shape
            return None, values
        return family, values

    def _collector_family(
        self, sample: Sample, families: dict[str, GaugeMetricFamily | CounterMetricFamily]
    ) -> tuple[GaugeMetricFamily | CounterMetricFamily | None, list[str]]:
        collector, _, target = sample.target.partition("/")
        names, values = ["collector", "target"], [bounded(collector), bounded(target)]
        spec = {
            "duration_ms": ("collect_duration_seconds", "gauge", "wall time of the last collection of the target"),
            "errors_total": ("collect_errors", "counter", "failed collections of the target since the process start"),
            "last_success_ts": (
                "collect_last_success_timestamp_seconds",
                "gauge",
                "unix time of the last successful collection",
            ),
        }.get(sample.metric)
        if spec is None:
            return None, values
        short, kind, help_text = spec
        name = metric_name(PREFIX, short)
        family = families.get(name)
        if family is None:
            family = (
                CounterMetricFamily(name, help_text, labels=names)
                if kind == "counter"
                else GaugeMetricFamily(name, help_text, labels=names)
            )
            families[name] = family
        return family, values

    @staticmethod
    def _value_of(sample: Sample) -> float:
        if sample.source == "collector" and sample.metric == "duration_ms":
            return sample.value / 1000.0  # Prometheus convention: seconds
        return sample.value

    def _self_families(self) -> Iterator[Metric]:
        with self._lock:
            flushes, errors = self.flushes_total, self.flush_errors_total
            duration, count = self.last_flush_duration_s, self.last_flush_samples
        yield CounterMetricFamily(f"{PREFIX}_flushes", "batches written to the store", value=flushes)
        yield CounterMetricFamily(f"{PREFIX}_flush_errors", "batches the store refused (samples lost)", value=errors)
        yield GaugeMetricFamily(f"{PREFIX}_flush_duration_seconds", "time to write the last batch", value=duration)
        yield GaugeMetricFamily(f"{PREFIX}_flush_samples", "samples in the last batch", value=count)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """``prometheus_client``'s HTTP server for one exporter, on its own registry (not the process default)."""

    def __init__(self, exporter: SampleExporter, listen: str) -> None:
        self.exporter = exporter
        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(exporter)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = int(self._server.server_address[1])  # when 0 was asked for, the port the kernel chose
        log.info("serving /metrics on %s:%d", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
