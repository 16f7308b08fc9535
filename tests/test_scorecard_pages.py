"""The Scorecard and Scaling tests pages under Streamlit's AppTest, on a SQLite store seeded with facts, a
scaling run and test-run documents (the pages only read the store; the figures are tested in test_scorecard)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from actions.proving import testruns
from actions.proving.scaling import latest_key, run_key
from actions.proving.scorecard import RULES
from core.store import Fact, Store

PAGES = Path(__file__).resolve().parent.parent / "dashboard" / "app_pages"
TIMEOUT_S = 60


def seeded_config(directory: Path, with_data: bool, runs: int = 2) -> Path:
    config = directory / "fleet.yaml"
    config.write_text(f"""
state_dir: {directory / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: 20000, end: 20010}}
store: {{url: "sqlite:///{directory / "fleetdeck.db"}"}}
dashboard: {{embedded_collector: false}}
""")
    store = Store(f"sqlite:///{directory / 'fleetdeck.db'}")
    if with_data:
        now = time.time()
        seeded = (("readiness-old", 7200, {"stateless_sessions"}), ("readiness-new", 0, set()))[-runs:]
        for run, offset, failing in seeded:
            for index, rule in enumerate(RULES):
                status = "fail" if rule.id in failing else ("pass" if rule.level != "Gold" else "warn")
                store.add_fact(Fact(None, run, rule.id, rule.level, "web", now - offset + index, status,
                                    f"observed {rule.id}", {"n": index}))
        steps = [{"replicas": 1, "throughput": 400.0, "p95_ms": 30.0, "efficiency": 1.0, "generator_cpu": 0.2,
                  "in_fit": True, "errors": 0, "instances": {"web-1": 800}},
                 {"replicas": 2, "throughput": 700.0, "p95_ms": 25.0, "efficiency": 0.875, "generator_cpu": 0.3,
                  "in_fit": True, "errors": 0, "instances": {"web-1": 700, "web-2": 700}}]
        scaling = {"run_id": "scaling-x", "state": "done", "steps": steps, "original_replicas": 3, "restored": True,
                   "restore_detail": "ok", "fit": {"lam": 400.0, "sigma": 0.14, "kappa": 0.0, "peak_n": None}}
        store.put_kv(run_key("scaling-x"), scaling)
        store.put_kv(latest_key("web"), {"run_id": "scaling-x"})
        recorder = testruns.Recorder(store, "scaling-20250101-000000-abcdef", "scaling", {"max_replicas": 2}, "alice")
        for tick in range(6):
            recorder.point({"elapsed_s": tick * 0.5, "rps": 400.0 + tick, "p95_ms": 20.0, "errors": 0,
                            "requests": tick * 200, "replicas": 1 + tick // 3})
        recorder.finish("done", result=scaling, steps=steps, passed=True, progress=1.0, message="done: pass")
    store.close()
    return config


@pytest.fixture
def open_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(page: str, with_data: bool = True, runs: int = 2) -> AppTest:
        monkeypatch.setenv("FLEETDECK_CONFIG", str(seeded_config(tmp_path, with_data, runs)))
        return AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=TIMEOUT_S).run()

    return run


def test_scorecard_page_shows_level_rules_and_exports(open_page) -> None:  # type: ignore[no-untyped-def]
    app = open_page("scorecard")
    assert not app.exception, app.exception
    markdown = " ".join(m.value for m in app.markdown)
    assert "Silver" in markdown  # newest run: Bronze+Silver pass, Gold warns
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Points"] == f"{round(100 * (sum(r.points for r in RULES if r.level != 'Gold') + 30) / 135)}%"
    assert metrics["Gold"] == "warn" and metrics["Bronze"] == "pass"
    frame = app.dataframe[0].value
    assert len(frame) == len(RULES)
    # plain readable statuses: material-icon shortcodes do not render inside dataframe cells
    assert set(frame["status"]) == {"PASS", "WARN"}  # words, no emoji (empty boxes without an emoji font)
    assert "readiness-new" in app.selectbox[0].value
    trend = trend_spec(app)
    assert trend["layout"]["xaxis"]["type"] == "category" and len(trend["data"][0]["x"]) == 2


def trend_spec(app: AppTest) -> dict:  # type: ignore[type-arg]
    chart = next(c for c in app.get("plotly_chart") if "Score over past runs" in c.proto.spec)
    return json.loads(chart.proto.spec)  # type: ignore[no-any-return]


def test_scorecard_trend_with_one_run_has_one_category_tick(open_page) -> None:  # type: ignore[no-untyped-def]
    app = open_page("scorecard", runs=1)
    assert not app.exception, app.exception
    trend = trend_spec(app)
    # a date axis would zoom one point to sub-second ticks; a category axis shows the run's time once
    assert trend["layout"]["xaxis"]["type"] == "category"
    (label,) = trend["data"][0]["x"]
    assert time.strptime(label, "%Y-%m-%d %H:%M")


def test_scorecard_page_without_runs(open_page) -> None:  # type: ignore[no-untyped-def]
    app = open_page("scorecard", with_data=False)
    assert not app.exception
    assert "No readiness run yet" in " ".join(i.value for i in app.info)


def test_scaling_tests_page_shows_the_last_run(open_page) -> None:  # type: ignore[no-untyped-def]
    app = open_page("scaling_tests")
    assert not app.exception, app.exception
    markdown = " ".join(m.value for m in app.markdown)
    assert "scaling-20250101-000000-abcdef" in markdown and "done" in markdown
    steps = app.dataframe[0].value
    assert list(steps["replicas"]) == [1, 2]
    # the viewer (nobody logged in) cannot start a test
    assert next(b for b in app.button if b.label == "Start").disabled


def test_readiness_run_draws_no_empty_throughput_chart(open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A readiness run has no timeline: the live panel says so instead of two empty charts."""
    app = open_page("scaling_tests")
    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    recorder = testruns.Recorder(store, "readiness-20250101-000000-abcdef", "readiness", {"rules": "all"}, "alice")
    recorder.finish("done", passed=True, progress=1.0, message="done: Silver")
    store.close()
    app.run()
    assert not app.exception, app.exception
    markdown = " ".join(m.value for m in app.markdown)
    assert "readiness-20250101-000000-abcdef" in markdown  # the newest run is the one shown
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    titles = [str(c.get("layout", {}).get("title", {}).get("text", "")) for c in charts]
    assert "Throughput" not in titles and "p95 latency" not in titles, titles
    assert "not a throughput timeline" in " ".join(c.value for c in app.caption)
    past = app.dataframe[-1].value
    assert past.iloc[0]["run"] == "readiness-20250101-000000-abcdef"


def test_load_run_shows_endpoint_and_failure_tables_and_csv(open_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A finished load test reads like Locust's: per endpoint, failures with an example, stats CSV, and the live
    charts on a time axis in seconds with a smoothed line."""
    app = open_page("scaling_tests")
    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    recorder = testruns.Recorder(store, "load-20250101-000000-abcdef", "load", {"path": "/work/echo"}, "alice")
    for tick in range(10):
        recorder.point({"elapsed_s": 0.5 * (tick + 1), "rps": 200.0 + (40 if tick % 2 else -40), "p95_ms": 12.0,
                        "errors": tick, "requests": 100 * (tick + 1)})
    result = {"url": "http://127.0.0.1:8080/work/echo?ms=2", "method": "GET", "requests": 1000, "errors": 7,
              "rps": 200.0, "latency_ms": {"p50": 4.0, "p95": 12.0, "p99": 20.0, "max": 31.0},
              "status_counts": {"200": 993, "503": 5}, "errors_by_kind": {"http_5xx": 5, "timeout": 2},
              "last_error": "timeout after 3s (127.0.0.1:8080)", "cancelled": 0}
    recorder.finish("done", result=result, passed=False, progress=1.0, message="done: not passed")
    store.close()
    app.run()
    assert not app.exception, app.exception
    endpoints = next(d.value for d in app.dataframe if "endpoint" in d.value.columns)
    row = endpoints.iloc[0]
    assert (row["method"], row["endpoint"], row["requests"], row["failures"]) == ("GET", "/work/echo?ms=2", 1000, 7)
    assert (row["median_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"]) == (4.0, 12.0, 20.0, 31.0)
    failures = next(d.value for d in app.dataframe if "outcome" in d.value.columns)
    assert list(failures["outcome"]) == ["HTTP 503", "timeout"]
    assert "timeout after 3s" in failures.iloc[1]["example"]
    assert any(b.label == "Stats (CSV)" for b in app.get("download_button"))
    import base64

    import numpy as np

    def values(array: object) -> list[float]:
        """Plotly 7 sends numeric arrays as {"dtype", "bdata"} (base64 of the raw buffer)."""
        if isinstance(array, dict):
            return list(np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]))
        return list(array)  # type: ignore[call-overload]

    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    throughput = next(c for c in charts if c["layout"]["title"]["text"] == "Throughput")
    assert throughput["layout"]["xaxis"]["title"]["text"] == "seconds"
    smooth = next(t for t in throughput["data"] if t.get("showlegend") is not False)
    assert values(smooth["x"]) == [0.5 * (tick + 1) for tick in range(10)]
    steady = values(smooth["y"])[4:]
    assert max(steady) - min(steady) < 40  # the ±40 req/s zigzag (80 peak to peak) is smoothed
