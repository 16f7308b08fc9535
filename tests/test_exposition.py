"""The selective /metrics reader against prometheus_client's parsers, on real pages and edge cases.

Real pages under tests/data/: ``promclient-15.1.3-default.txt`` is prom-client 15.1.3's ``register.metrics()``
(default metrics, a labelled request histogram and counter, a gauge with escaped quotes/backslashes/newlines in a
label value and a NaN), ``sampleapp-metrics.txt`` is our sample app's /metrics (prometheus_client output).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from collectors.exposition import ExpositionError, scan
from collectors.instance_readings import KEPT_FAMILIES, PromReading, parse_prometheus

DATA = Path(__file__).parent / "data"
PAGES = ["promclient-15.1.3-default.txt", "sampleapp-metrics.txt"]


def _reference(text: str, openmetrics: bool = False) -> list[tuple[str, dict[str, str], float]]:
    families = openmetrics_families(text) if openmetrics else text_string_to_metric_families(text)
    return [(s.name, dict(s.labels), float(s.value)) for family in families for s in family.samples]


def _same(expected: list[tuple[str, dict[str, str], float]], text: str, names: list[str]) -> None:
    got = [(s.name, s.labels, s.value) for s in scan(text, names)]
    wanted = [item for item in expected if item[0] in names]

    def order(item: tuple[str, dict[str, str], float]) -> tuple[str, list[tuple[str, str]]]:
        return item[0], sorted(item[1].items())

    got.sort(key=order)
    wanted.sort(key=order)
    assert [(n, labels) for n, labels, _ in got] == [(n, labels) for n, labels, _ in wanted]
    for (_, _, mine), (_, _, theirs) in zip(got, wanted, strict=True):
        assert mine == theirs or (math.isnan(mine) and math.isnan(theirs))


def _old_reading(text: str) -> PromReading:
    """What the collector computed with prometheus_client's parser before (the reference for identical values)."""
    samples = _reference(text)
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append((labels, value))

    def one(name: str) -> float | None:
        return by_name[name][-1][1] if name in by_name else None

    def total(name: str) -> tuple[float, float] | None:
        if name not in by_name:
            return None
        rows = by_name[name]
        fives = sum(v for labels, v in rows if any(labels.get(k, "").startswith("5") for k in ("status_code", "code")))
        return sum(v for _, v in rows), fives

    lag = one("nodejs_eventloop_lag_seconds")
    requests = total("http_request_duration_seconds_count") or total("http_requests_total")
    return PromReading(
        one("process_resident_memory_bytes"),
        one("process_cpu_seconds_total"),
        lag if lag is not None else one("eventloop_lag_seconds"),
        requests[0] if requests else None,
        requests[1] if requests else None,
    )


@pytest.mark.parametrize("page", PAGES)
def test_real_pages_every_family_identical_to_prometheus_client(page: str) -> None:
    text = (DATA / page).read_text()
    expected = _reference(text)
    names = sorted({name for name, _, _ in expected})
    assert len(expected) > 50
    _same(expected, text, names)


@pytest.mark.parametrize("page", PAGES)
def test_real_pages_kept_reading_identical_to_the_old_parser(page: str) -> None:
    text = (DATA / page).read_text()
    assert parse_prometheus(text) == _old_reading(text)
    _same(_reference(text), text, list(KEPT_FAMILIES))
    assert parse_prometheus(text).rss_bytes is not None and parse_prometheus(text).requests_total is not None


def test_escapes_special_values_timestamps_and_no_trailing_newline() -> None:
    text = (
        "# HELP http_requests_total with a \\\\ backslash and a \\n newline in help\n"
        "# TYPE http_requests_total counter\n"
        'http_requests_total{route="/a\\"b}",status_code="500",x="c\\\\d\\ne, f=\\"g\\""} 3 1700000000000\n'
        'http_requests_total{route="{}",status_code="200",} 1e3\n'
        "http_requests_total{ route = \"/sp\" , status_code=\"204\"} +Inf\n"
        'other_total{route="http_requests_total 9"} 7\n'
        "process_cpu_seconds_total -Inf\n"
        "process_resident_memory_bytes NaN\n"
        "nodejs_eventloop_lag_seconds\t1.5e-3"
    )
    _same(_reference(text), text, ["http_requests_total", "process_cpu_seconds_total", "nodejs_eventloop_lag_seconds"])
    got = {s.labels.get("route"): s for s in scan(text, ["http_requests_total"])}
    assert got['/a"b}'].labels["x"] == 'c\\d\ne, f="g"'
    assert got["{}"].value == 1000.0 and got["/sp"].value == math.inf
    assert math.isnan(scan(text, ["process_resident_memory_bytes"])[0].value)
    assert scan(text, ["nodejs_eventloop_lag_seconds"])[0].value == 0.0015  # last line, no newline


def test_openmetrics_exemplars_and_eof_identical_to_prometheus_client() -> None:
    text = (
        "# TYPE http_request_duration_seconds histogram\n"
        'http_request_duration_seconds_bucket{le="0.1",status_code="200"} 8 1700000000.5'
        ' # {trace_id="abc"} 0.05 1700000000.1\n'
        'http_request_duration_seconds_bucket{le="+Inf",status_code="200"} 9 1700000000.5\n'
        'http_request_duration_seconds_count{status_code="200"} 9 1700000000.5\n'
        'http_request_duration_seconds_sum{status_code="200"} 0.5 1700000000.5\n'
        "# EOF\n"
    )
    _same(_reference(text, openmetrics=True), text, ["http_request_duration_seconds_count"])
    _same(_reference(text, openmetrics=True), text, ["http_request_duration_seconds_bucket"])
    after_eof = text + 'http_request_duration_seconds_count{status_code="500"} 4\n'
    assert [s.value for s in scan(after_eof, ["http_request_duration_seconds_count"])] == [9.0]


def test_prefixes_and_comments_are_not_samples() -> None:
    text = (
        "process_cpu_seconds_total_extra 5\n"
        "# process_cpu_seconds_total 6\n"
        "process_cpu_seconds_total 1\n"
        "process_cpu_seconds_total_created 2\n"
    )
    assert [s.value for s in scan(text, ["process_cpu_seconds_total"])] == [1.0]
    assert scan(text[: text.index("process_cpu_seconds_total 1")], ["process_cpu_seconds_total"]) == []
    assert [s.value for s in scan("process_cpu_seconds_total 4", ["process_cpu_seconds_total"])] == [4.0]


def test_bounds_fail_with_a_reason() -> None:
    many_labels = "http_requests_total{" + ",".join(f'l{i}="v"' for i in range(10_000)) + "} 1\n"
    with pytest.raises(ExpositionError, match="characters"):
        scan(many_labels, ["http_requests_total"])
    with pytest.raises(ExpositionError, match="more than 64 labels"):
        scan("http_requests_total{" + ",".join(f'l{i}="v"' for i in range(70)) + "} 1\n", ["http_requests_total"])
    with pytest.raises(ExpositionError, match="over 1048576 characters"):
        scan("#" * (1 << 20) + "\n", ["http_requests_total"])
    series = "".join(f'http_requests_total{{n="{i}"}} 1\n' for i in range(5000))
    with pytest.raises(ExpositionError, match="kept samples"):
        scan(series, ["http_requests_total"])
    with pytest.raises(TimeoutError):
        scan(series, ["http_requests_total"], deadline=time.monotonic() - 1, max_samples=10_000)
    for broken in ('http_requests_total{a="b} 1\n', "http_requests_total{a=b} 1\n", "http_requests_total 1_0\n"):
        with pytest.raises(ExpositionError):
            scan(broken, ["http_requests_total"])
    # an unwanted family may be as broken as it likes: it is never tokenised
    assert scan('junk_total{a="} x\nhttp_requests_total 2\n', ["http_requests_total"])[0].value == 2.0
