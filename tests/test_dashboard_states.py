"""The dashboard tells the truth about replica states (issue 13): dead, removed by an action, out of rotation,
listed by nginx but not answering; alert counts. AppTest against a real SQLite store seeded with history plus the
replica registry and the events the actions write, and against a real fleet with a replica killed."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import load_config
from core.process import pid_alive
from core.samples import Sample
from core.store import ReplicaRecord, Store
from dashboard import queries, ranges, sample_data
from dashboard.fleet_state import fleet_state
from dashboard.sample_data import FleetShape
from tests.test_dashboard_pages import APP, TIMEOUT_S, metrics, texts, write_config
from tests.test_faults_fleet import fleetdeck, nginx_of, stop_fleet, wait_for, write_fleet

REMOVED_ERROR = "GET /health: connection refused (removed)"


def record(index: int, state: str = "running") -> ReplicaRecord:
    return ReplicaRecord("web", f"web-{index}", "local", "127.0.0.1", 9100 + index, 1000 + index, state,
                         time.time() - 900, str(1000 + index))


def seed_states(directory: Path) -> Path:
    """web-1 running; web-2 running but drained (nginx says down); web-3 died (registry `dead`, its last poll
    still said pass); web-4 removed by a scale-down (stopped, left the registry, its last poll failed)."""
    config = write_config(directory)
    store = Store(f"sqlite:///{directory / 'fleetdeck.db'}")
    now = time.time()
    sample_data.seed(store, FleetShape(span_s=900, step_s=10, instances=3), now)
    for index, state in ((1, "running"), (2, "running"), (3, "dead")):
        store.upsert_replica(record(index, state))
    store.put_kv("desired:web", {"replicas": 3, "ts": now})
    store.write_samples([Sample("nginx", "nginx:web/127.0.0.1:9102", "server_state", 2, now, "", text="down")])
    store.add_event("replica.start", "web/web-4", "started pid 1004 on port 9104", ts=now - 600)
    store.write_samples([
        Sample("instance", "web/web-4", "up", 1, now - 120, "bool"),
        Sample("instance", "web/web-4", "up", 0, now - 2, "bool", text=REMOVED_ERROR),
        Sample("alert", "instance_down/web/web-4", "firing", 1, now - 2, "bool", text="web/web-4 is down"),
    ])
    logs = directory / "run" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "web-1.log").write_text("".join(f"GET /work/echo 200 request {n}\n" for n in range(500))
                                    + "ERROR pool exhausted <script>alert(1)</script>\n" + "x" * 5000 + "\n")
    store.add_event("replica.stop", "web/web-4", "stopped (graceful)", ts=now - 5)
    store.add_event("action", "web", "scale web 4 → 3: stopped web-4", ts=now - 4)
    store.close()
    return config


@pytest.fixture(scope="module")
def states_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed_states(tmp_path_factory.mktemp("states"))


@pytest.fixture
def open_page(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, str], AppTest]:
    def run(config: Path, page: str) -> AppTest:
        monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
        app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
        app.run()
        app.switch_page(f"app_pages/{page}.py").run()
        assert not app.exception, [e.value for e in app.exception]
        return app

    return run


def test_overview_shows_desired_running_and_dead(open_page: Callable[[Path, str], AppTest],
                                                 states_config: Path) -> None:
    app = open_page(states_config, "overview")
    tile = next(m for m in app.metric if m.label == "Instances running")
    assert (tile.value, tile.delta) == ("2 / 3", "1 dead")
    # a replica a scale-down removed is not an outage: no red box, and its last alert does not count
    assert "web/web-4" not in texts(app.error)
    assert metrics(app)["Active alerts"] == "1"  # the seeded queue alert only


def test_instances_page_dead_is_down_removed_is_gone_drained_is_out(
    open_page: Callable[[Path, str], AppTest], states_config: Path
) -> None:
    app = open_page(states_config, "instances")
    table = app.dataframe[0].value.set_index("instance")
    assert "web/web-4" not in table.index
    assert table.loc["web/web-3", "status"] == "DOWN" and table.loc["web/web-3", "health"] == "process gone"
    assert table.loc["web/web-2", "status"] == "UP" and table.loc["web/web-2", "rotation"] == "out"
    assert table.loc["web/web-1", "rotation"] == "in rotation"
    badges = texts(app.markdown)
    assert "`web/web-2` :green-badge[UP] :violet-badge[out of rotation]" in badges
    assert "`web/web-3` :red-badge[DOWN]" in badges
    assert "web/web-4" not in app.selectbox(key="fd_instance").options
    app.selectbox(key="fd_instance").set_value("web/web-2").run()
    assert "**web/web-2** :green-badge[UP] :violet-badge[out of rotation]" in texts(app.markdown)


def test_a_killed_replica_nginx_still_lists_does_not_read_in_rotation(
    open_page: Callable[[Path, str], AppTest], tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """kill -9 of a real replica: nginx's file keeps it `up` until an action removes it, and "in rotation" next to
    it read as if it served. The Instances and Load-balancer pages say that nginx lists it and it does not answer."""
    config_file = write_fleet(tmp_path, pg_dsn, redis_url, redis_prefix, standalone_collector=True)
    try:
        started = fleetdeck(config_file, "up", "--no-dashboard")
        assert started.returncode == 0, started.stdout + started.stderr
        store = Store(load_config(config_file).store_url)
        both_serving = {"web/web-1": "in rotation", "web/web-2": "in rotation"}
        wait_for(lambda: fleet_state(store, time.time()).rotation == both_serving, "both replicas in rotation")
        victim = next(r for r in store.replicas("web") if r.instance_id == "web-1")
        assert victim.pid and pid_alive(victim.pid)

        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: [row.value for row in store.latest(source="instance", metric="up", target="web/web-1")] == [0],
                 "the collector to find web-1 not answering")
        listed = {server.instance_id: server.state for server in nginx_of(config_file).current()}
        assert listed == {"web-1": "up", "web-2": "up"}  # nothing took it out: nginx still tries it

        app = open_page(config_file, "instances")
        table = app.dataframe[0].value.set_index("instance")
        assert table.loc["web/web-1", "status"] == "DOWN"
        assert table.loc["web/web-1", "rotation"] == "in nginx, not answering"
        assert table.loc["web/web-2", "rotation"] == "in rotation"
        assert "`web/web-1` :red-badge[DOWN] :red-badge[in nginx, not answering]" in texts(app.markdown)
        app.selectbox(key="fd_instance").set_value("web/web-1").run()
        assert "**web/web-1** :red-badge[DOWN] :red-badge[in nginx, not answering]" in texts(app.markdown)
        assert "**Last health response**, from before it stopped answering" in texts(app.markdown)

        app = open_page(config_file, "load_balancer")
        servers = app.dataframe[0].value.set_index("server")
        assert servers.loc[f"{victim.host}:{victim.port}", "state"] == "up, not answering"
        assert (servers["state"] == "up").sum() == 1  # web-2
    finally:
        stop_fleet(config_file)


def test_rotation_words_combine_nginx_with_whether_the_replica_answers() -> None:
    from core.store import Latest, SeriesInfo
    from dashboard.fleet_state import is_dead, rotation_by_target

    def server(address: str, word: str) -> dict[str, Latest]:
        info = SeriesInfo(1, "nginx", f"nginx:web/{address}", "server_state", (), "")
        return {"server_state": Latest(info, time.time(), {"up": 0, "draining": 1, "down": 2}[word], word)}

    nginx = {f"nginx:web/127.0.0.1:910{n}": server(f"127.0.0.1:910{n}", word)
             for n, word in ((1, "up"), (2, "up"), (3, "draining"), (4, "down"))}
    addresses = {f"web/web-{n}": f"127.0.0.1:910{n}" for n in range(1, 6)}
    assert rotation_by_target(nginx, addresses) == {"web/web-1": "in rotation", "web/web-2": "in rotation",
                                                    "web/web-3": "draining", "web/web-4": "out"}
    assert rotation_by_target(nginx, addresses, dead=["web/web-2", "web/web-3", "web/web-4", "web/web-5"]) == {
        "web/web-1": "in rotation", "web/web-2": "in nginx, not answering", "web/web-3": "out", "web/web-4": "out"}
    assert is_dead("dead", 1) and is_dead("running", 0) and is_dead("draining", 0)
    assert not is_dead("running", None) and not is_dead("running", 1) and not is_dead("stopped", 0)


def test_removed_replica_stays_in_history(states_config: Path) -> None:
    store = Store(f"sqlite:///{states_config.parent / 'fleetdeck.db'}")
    try:
        now = time.time()
        charts = {c.title: c for c in queries.overview_charts(store, ranges.window("15 min", now))}
        assert charts["Instances up"].traces  # web-4's samples are still summed into the history
        up_series = {i.target for i in store.find_series(source="instance", metric="up")}
        assert "web/web-4" in up_series
        assert fleet_state(store, now).removed == {"web/web-4"}
    finally:
        store.close()


def test_alert_counts_are_whole_numbers_and_match_the_tile(tmp_path: Path) -> None:
    """Two alerts firing for part of a chart cell used to chart as 0.25/0.5; the last cell is the tile's count."""
    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    try:
        now = time.time()
        samples = []
        for offset in range(0, 300, 2):
            ts = now - 300 + offset
            samples.append(Sample("alert", "instance_down/web/web-1", "firing", 1 if offset % 8 == 0 else 0, ts,
                                  "bool"))
            samples.append(Sample("alert", "lock_waiters/postgres:main", "firing", 1 if offset > 200 else 0, ts,
                                  "bool"))
        samples.append(Sample("alert", "instance_down/web/web-1", "firing", 1, now, "bool", text="down"))
        samples.append(Sample("alert", "lock_waiters/postgres:main", "firing", 1, now, "bool", text="waiters"))
        store.write_samples(samples)
        window = ranges.window("1 h", now)
        chart = next(c for c in queries.overview_charts(store, window) if c.title == "Alerts firing")
        values = chart.traces[0].value
        assert all(float(v).is_integer() for v in values), values
        tile = next(t for t in queries.overview_tiles(store, 60) if t.label == "Active alerts")
        assert tile.value == "2" and values[-1] == 2
    finally:
        store.close()


def test_alerts_page_lists_firing_with_since_message_and_link(open_page: Callable[[Path, str], AppTest],
                                                              states_config: Path) -> None:
    app = open_page(states_config, "alerts")
    firing = app.dataframe[0].value
    assert list(firing["rule"]) == ["no_workers"]  # the removed web-4's last alert is not an outage
    row = firing.iloc[0]
    assert row["subject"] == "main/bull:reports" and "no worker" in row["message"]
    assert ":" in row["since"]  # a wall-clock time, and how long it has fired
    assert row["for_s"].endswith(("min", "s"))
    assert row["chart"].startswith("./")
    assert "Firing now: 1" in texts(app.subheader)


def test_alert_history_lists_resolved_runs_with_links(tmp_path: Path) -> None:
    from dashboard import alerts_view

    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    try:
        now = time.time()
        store.write_samples([Sample("alert", "instance_down/web/web-2", "firing", 1 if 60 <= age <= 120 else 0,
                                    now - age, "bool") for age in range(300, -1, -5)])
        resolved = alerts_view.resolved_alerts(store, ranges.window("15 min", now))
        assert len(resolved) == 1
        run = resolved.iloc[0]
        assert (run["rule"], run["subject"]) == ("instance_down", "web/web-2")
        assert 50 <= run["lasted_s"] <= 75
        assert run["chart"] == "./instances?instance=web%2Fweb-2"
        assert alerts_view.active_alerts(store, now).empty
    finally:
        store.close()


def test_redis_without_maxmemory_says_unlimited(open_page: Callable[[Path, str], AppTest], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    now = time.time()
    store.write_samples([Sample("redis", "redis:main", "up", 1, now, "bool"),
                         Sample("redis", "redis:main", "used_memory_bytes", 1.25 * 2**20, now, "bytes"),
                         Sample("redis", "redis:main", "maxmemory_bytes", 0, now, "bytes")])
    store.close()
    app = open_page(config, "redis")
    assert metrics(app)["Memory"] == "1.2 MiB" and metrics(app)["maxmemory"] == "unlimited"
    assert len(app.get("plotly_chart")) == 4  # the four time charts; no "full" usage bar against no limit
    assert "unlimited" in texts(app.caption)


def test_queue_sparklines_name_the_span_they_cover(open_page: Callable[[Path, str], AppTest],
                                                   states_config: Path) -> None:
    """15 min of history under a 1 h range: the sparkline column says 15 min, not "last 1 h"."""
    app = open_page(states_config, "queues")
    columns = app.dataframe[0].proto.columns
    label = json.loads(columns)["trend"]["label"]
    assert re.fullmatch(r"last 1[3-7] min \(of 1 h\)", label), label  # 90 s buckets: 13–17 min
    assert '"last 1 h"' not in columns


def test_freshness_caption_carries_wall_clock_times(open_page: Callable[[Path, str], AppTest],
                                                    states_config: Path) -> None:
    """With auto-refresh off a frozen "2 s ago" would mislead: the caption names the clock times as well."""
    app = open_page(states_config, "overview")
    caption = next(c.value for c in app.caption if c.value.startswith("Data as of"))
    assert re.match(r"Data as of (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d, drawn at (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d: ",
                    caption), caption
    app = open_page(states_config, "redis")
    caption = next(c.value for c in app.caption if c.value.startswith("Data as of"))
    assert re.search(r"when drawn at \d\d:\d\d:\d\d", caption), caption


def test_alert_since_is_the_start_of_the_firing_run(tmp_path: Path) -> None:
    """Precise to a few seconds, not to the minute bucket of a day-long query."""
    from dashboard import alerts_view

    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    try:
        now = time.time()
        store.write_samples([Sample("alert", "instance_down/web/web-2", "firing", 1 if age <= 45 else 0, now - age,
                                    "bool", text="web/web-2 is down" if age <= 45 else "")
                             for age in range(600, -1, -2)])
        active = alerts_view.active_alerts(store, now)
        assert list(active["subject"]) == ["web/web-2"]
        assert abs(active.iloc[0]["since"] - (now - 45)) <= 5, now - active.iloc[0]["since"]
    finally:
        store.close()


def test_instance_detail_tails_and_searches_the_replica_log(open_page: Callable[[Path, str], AppTest],
                                                            states_config: Path) -> None:
    app = open_page(states_config, "instances")
    app.selectbox(key="fd_instance").set_value("web/web-1").run()
    # drawn only while its expander is open (a closed one reads no log and costs the browser nothing)
    assert not app.code and "fd_log_search" not in app.session_state
    app.session_state["fd_log_open"] = True  # what a click on the expander does
    app.run()
    log = app.code[-1].value.splitlines()
    assert len(log) == 200 and log[-3] == "GET /work/echo 200 request 499"
    assert log[-1].endswith(" …") and len(log[-1]) < 2100  # a runaway line is cut
    app.text_input(key="fd_log_search").set_value("error").run()
    assert app.code[-1].value == "ERROR pool exhausted <script>alert(1)</script>"  # shown as text, not HTML
    assert "1 line(s) containing “error” of the last 502" in texts(app.caption)


def test_a_zoomed_range_in_the_url_sets_every_chart_and_can_be_left(monkeypatch: pytest.MonkeyPatch,
                                                                     states_config: Path) -> None:
    """Drag-to-zoom writes ?from=…&to=… (unix seconds); a link with them reproduces the zoomed view."""
    from dashboard import figures

    now = time.time()
    start, end = now - 1800, now - 600
    # what the browser sends back for a dragged box on a date axis: the shifted local clock, as text or ms
    shifted_ms = float(figures.to_axis_ms([start])[0])
    assert abs(ranges.axis_to_unix(shifted_ms) - start) < 1e-3
    as_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(shifted_ms / 1000))
    assert abs(ranges.axis_to_unix(as_text) - int(start)) < 1.0
    assert ranges.zoom_window("x", "y") is None and ranges.zoom_window(now, now + 5) is None

    monkeypatch.setenv("FLEETDECK_CONFIG", str(states_config))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.query_params["from"] = f"{start:.0f}"
    app.query_params["to"] = f"{end:.0f}"
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    expected = [float(v) for v in figures.to_axis_ms([float(f"{start:.0f}"), float(f"{end:.0f}")])]
    assert specs and all(s["layout"]["xaxis"]["range"] == expected for s in specs), specs[0]["layout"]["xaxis"]
    assert all(s["layout"]["dragmode"] == "select" for s in specs)
    assert any(c.value.startswith("Zoomed: ") for c in app.sidebar.caption)
    app.button(key="fd_zoom_reset").click().run()
    assert "from" not in app.query_params
    live = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["range"]
    assert abs((live[1] - live[0]) / 1000 - 3600) < 10  # back to the 1 h range


def test_pending_alert_is_listed_with_its_since(tmp_path: Path) -> None:
    """A rule with `for:` is pending first: the evaluator says so in the sample, the Alerts data lists it."""
    from collectors.alerts import AlertEvaluator
    from dashboard import alerts_view
    from tests.test_alert_rules import config_with, pg

    evaluator = AlertEvaluator(config_with({"rules": {"db_headroom": {"for": "5m"}}}).alerts.rules)
    now = time.time()
    store = Store(f"sqlite:///{tmp_path / 'fleetdeck.db'}")
    try:
        for ts in (now - 60, now - 30, now):
            samples = pg(ts, 0.1, 2)
            store.write_samples(samples + evaluator.evaluate(samples))
        active = alerts_view.active_alerts(store, now).set_index("rule")
        pending = active.loc["db_headroom"]
        assert pending["state"] == "pending" and pending["subject"] == "postgres:main"
        assert abs(pending["since"] - (now - 60)) <= 1 and "connections left" in pending["message"]
        tile = next(t for t in queries.overview_tiles(store, 60) if t.label == "Active alerts")
        assert tile.value == "1"  # lock_waiters fires at once; the pending one is not counted as firing
    finally:
        store.close()
