"""Every dashboard page under Streamlit's AppTest against a real SQLite store: seeded, empty, sources down."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import Store
from dashboard import sample_data
from dashboard.sample_data import FleetShape
from tests.support import free_port

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = ["overview", "instances", "load_balancer", "queues", "database", "redis"]
TIMEOUT_S = 60  # two cores shared with other test suites: generous, a hang still fails


def write_config(directory: Path) -> Path:
    config = directory / "fleet.yaml"
    config.write_text(
        f"""
state_dir: {directory / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: 20000, end: 20010}}
store: {{url: "sqlite:///{directory / "fleetdeck.db"}"}}
dashboard: {{embedded_collector: false}}
"""
    )
    return config


def seeded(directory: Path, shape: FleetShape | None) -> Path:
    config = write_config(directory)
    store = Store(f"sqlite:///{directory / 'fleetdeck.db'}")
    if shape is not None:
        sample_data.seed(store, shape, time.time())
    store.close()
    return config


@pytest.fixture(scope="module")
def normal_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded(tmp_path_factory.mktemp("normal"), FleetShape(span_s=3600, step_s=10))


@pytest.fixture(scope="module")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded(tmp_path_factory.mktemp("empty"), None)


@pytest.fixture(scope="module")
def broken_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """web-2 fails its health checks; Redis, Postgres, nginx and the queue Redis stopped answering."""
    return seeded(tmp_path_factory.mktemp("broken"),
                  FleetShape(down=(2,), unreachable=("redis", "postgres", "nginx", "bullmq")))


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


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def raw_texts(elements: object) -> str:
    """The elements' Markdown source, escapes included."""
    return "\n".join(str(e.value) for e in elements)  # type: ignore[attr-defined]


def texts(elements: object) -> str:
    """The elements' text as a reader sees it (outside strings are Markdown-escaped: dashboard/safe_text.py)."""
    return re.sub(r"\\(.)", r"\1", "\n".join(str(e.value) for e in elements))  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ seeded store


def test_overview_tiles_show_the_seeded_fleet(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "overview")
    assert metrics(app) == {
        "Instances": "3 / 3 up",
        "Requests/s": "42.5",
        "5xx/s": "0.25 (0.6%)",
        "p95 latency": "35 ms",  # worst upstream: 20 + 5 × 3
        "Queue backlog": "11",  # 7 emails + 4 reports
        "Failed jobs/min": "9.0",  # (0.05 + 0.1)/s × 60
        "Postgres connections": "14 / 60",
        "Active alerts": "1",
    }
    assert not app.error
    freshness = texts(app.caption)
    for source in ("instance", "nginx", "bullmq", "redis", "postgres"):
        assert f"{source} " in freshness and " s ago" in freshness
    # sidebar pickers drive the range; every range renders
    app.selectbox(key="fd_range").set_value("7 days").run()
    assert not app.exception
    assert metrics(app)["Requests/s"] == "42.5"


def test_instances_table_and_detail(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "instances")
    table = app.dataframe[0].value
    assert list(table["instance"]) == ["web/web-1", "web/web-2", "web/web-3"]
    assert list(table["status"]) == ["UP", "UP", "UP"]
    row = table.set_index("instance").loc["web/web-2"]
    assert row["latency_ms"] == pytest.approx(12)
    assert row["memory_mb"] == pytest.approx(102)
    assert row["cpu_percent"] == pytest.approx(10)
    assert row["loop_lag_ms"] == pytest.approx(2)
    assert (row["in_flight"], row["pool_total"], row["pool_idle"], row["pool_waiting"]) == (2, 10, 8, 0)
    assert row["version"] == sample_data.VERSION
    assert ":green-badge[UP]" in texts(app.markdown)
    # detail view: raw health JSON of the selected instance
    app.selectbox(key="fd_instance").set_value("web/web-3").run()
    assert not app.exception
    health = app.json[0].value
    assert '"instanceId": "web-3"' in health or '"instanceId":"web-3"' in health.replace(" ", "")
    assert [b.label for b in app.get("download_button")] == ["Download instances (CSV)"]


def test_instance_and_service_actions_are_drawn_when_opened(open_page: Callable[[Path, str], AppTest],
                                                            normal_config: Path) -> None:
    """The action widgets sit in expanders drawn only while open (they held the page's first chart back); an
    open one stays open while the operator picks another instance."""
    app = open_page(normal_config, "instances")
    labels = [e.label for e in app.expander]
    assert "Drain, undrain or restart this instance" in labels and "Scale or roll **web**" in labels
    assert not any(b.label in ("Drain", "Scale") for b in app.button)
    app.session_state["fd_instance_actions"] = True  # what a click on the expander does
    app.session_state["fd_service_actions-web"] = True
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert {"Drain", "Undrain", "Restart", "Scale", "Rolling restart"} <= {b.label for b in app.button}
    assert app.button(key="fd-act-web-web-1-drain").disabled  # read-only before a login
    app.selectbox(key="fd_instance").set_value("web/web-3").run()
    assert app.button(key="fd-act-web-web-3-drain") is not None


def test_a_held_lock_is_said_with_the_actions_closed(open_page: Callable[[Path, str], AppTest],
                                                     normal_config: Path) -> None:
    store = Store(f"sqlite:///{normal_config.parent / 'fleetdeck.db'}")
    acquired, _holder = store.acquire_lock("web", "drain", "olga", "op-drain-web-2", 120)
    assert acquired
    try:
        app = open_page(normal_config, "instances")
        assert "busy: drain by olga since" in texts(app.info), texts(app.info)
    finally:
        store.release_lock("web", "op-drain-web-2")
        store.close()


def test_load_balancer_page(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "load_balancer")
    assert metrics(app)["Requests/s"] == "42.5"
    assert metrics(app)["Reading / writing / waiting"] == "0 / 3 / 9"
    servers = app.dataframe[0].value.set_index("server")
    assert list(servers.index) == ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
    assert servers.loc["127.0.0.1:9101", "status_5xx_per_s"] == pytest.approx(0.25)
    assert servers.loc["127.0.0.1:9103", "p95_ms"] == pytest.approx(35)
    assert "No rendered upstream yet" in texts(app.caption)


def test_load_balancer_shows_rendered_upstream(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    nginx_dir = normal_config.parent / "run" / "nginx"
    nginx_dir.mkdir(parents=True, exist_ok=True)
    (nginx_dir / "upstream.conf").write_text("upstream web {\n    server 127.0.0.1:9101;\n}\n")
    (nginx_dir / "upstream.json").write_text('{"generation": 7, "applied_at": 1700000000, "servers": []}')
    try:
        app = open_page(normal_config, "load_balancer")
        assert "server 127.0.0.1:9101;" in app.code[0].value
        assert "Generation 7" in texts(app.caption)
    finally:
        (nginx_dir / "upstream.conf").unlink()
        (nginx_dir / "upstream.json").unlink()


def test_queues_page(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "queues")
    frame = app.dataframe[0].value
    counts = {(r.queue, r.state): r.count for r in frame.itertuples()}
    assert counts[("main/bull:emails", "waiting")] == 7
    assert counts[("main/bull:reports", "failed")] == 1
    assert all(len(t) > 10 for t in frame["trend"])  # sparkline history, not just the last value
    badges = raw_texts(app.markdown)
    assert "main/bull\\:reports :red-badge[no workers]" in badges  # the queue name Markdown-escaped
    assert "main/bull\\:emails :green-badge[2 workers]" in badges
    assert "main/bull\\:reports" in raw_texts(app.error) and "no worker" in texts(app.error)
    app.selectbox(key="fd_queue").set_value("main/bull:reports").run()
    assert not app.exception


def test_database_page(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "database")
    assert metrics(app) == {
        "Connections": "14 / 60", "Headroom": "83", "Longest xact": "2.5 s", "Idle in xact": "0.5 s",
        "Lock waiters": "1", "Cache hit ratio": "99.5 %",
    }
    apps = app.dataframe[0].value
    assert apps["connections"].sum() == 14
    assert apps.iloc[0].to_dict() == {"application": "web-2", "state": "idle", "connections": 6}
    pools = app.dataframe[1].value
    assert pools.iloc[0].to_dict() == {"database": "fleetdeck_demo", "user": "web", "cl_active": 8, "cl_waiting": 0,
                                       "sv_active": 3, "sv_idle": 2, "maxwait_s": 0}
    assert [b.label for b in app.get("download_button")] == [
        "Download connections per application (CSV)", "Download PgBouncer pools (CSV)"]


def test_redis_page(open_page: Callable[[Path, str], AppTest], normal_config: Path) -> None:
    app = open_page(normal_config, "redis")
    values = metrics(app)
    assert values["Memory"] == "50 MiB"
    assert values["maxmemory"] == "100 MiB (50% used)"
    assert values["Clients"] == "12"
    assert values["Ops/s"] == "340"
    assert "allkeys-lru" in texts(app.warning) and "noeviction" in texts(app.warning)


# ------------------------------------------------------------------------------------------------- empty store


@pytest.mark.parametrize("page", PAGES)
def test_empty_store_says_no_data(open_page: Callable[[Path, str], AppTest], empty_config: Path, page: str) -> None:
    app = open_page(empty_config, page)
    assert not app.error
    shown = texts(app.info) + texts(app.caption)
    assert "No " in shown and ("data yet" in shown or "appear here" in shown)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_standalone(monkeypatch: pytest.MonkeyPatch, empty_config: Path, page: str) -> None:
    """A page file does not depend on the router having run (defaults for the sidebar's choices)."""
    monkeypatch.setenv("FLEETDECK_CONFIG", str(empty_config))
    app = AppTest.from_file(str(APP.parent / "app_pages" / f"{page}.py"), default_timeout=TIMEOUT_S).run()
    assert not app.exception, [e.value for e in app.exception]


# --------------------------------------------------------------------------------------- unreachable sources


def test_down_instance_is_red(open_page: Callable[[Path, str], AppTest], broken_config: Path) -> None:
    app = open_page(broken_config, "instances")
    table = app.dataframe[0].value
    assert table.iloc[0]["instance"] == "web/web-2"  # the broken one sorts first
    assert table.iloc[0]["status"] == "DOWN"
    assert table.iloc[0]["health"] == "no answer"
    assert "`web/web-2` :red-badge[DOWN]" in texts(app.markdown)
    app.selectbox(key="fd_instance").set_value("web/web-2").run()
    assert sample_data.DOWN_ERROR in texts(app.error)
    assert "last success" in texts(app.error)


@pytest.mark.parametrize(("page", "target"), [("load_balancer", "nginx:web"), ("queues", "main"),
                                              ("database", "postgres:main"), ("redis", "redis:main")])
def test_unreachable_source_shows_error_and_last_success(
    open_page: Callable[[Path, str], AppTest], broken_config: Path, page: str, target: str
) -> None:
    app = open_page(broken_config, page)
    errors = texts(app.error)
    assert f"{target} is unreachable" in errors
    assert sample_data.UNREACHABLE_ERROR in errors
    assert "last success" in errors and "s ago" in errors


def test_overview_with_sources_down(open_page: Callable[[Path, str], AppTest], broken_config: Path) -> None:
    app = open_page(broken_config, "overview")
    assert metrics(app)["Instances"] == "2 / 3 up"
    errors = texts(app.error)
    for target in ("web/web-2", "nginx:web", "redis:main", "postgres:main"):
        assert f"{target} is unreachable" in errors


def test_broken_config_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("services:\n  - name: web\n    comand: x\n    ports: {start: 20000, end: 20010}\n")
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not app.exception
    assert "services.0.comand: unknown key" in texts(app.error)


def test_embedded_collectors_feed_the_instances_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With embedded_collector on, the dashboard starts the real scheduler; a target nobody serves turns red."""
    from collectors.scheduler import stop_embedded

    port = free_port()  # nothing listens here
    config = tmp_path / "fleet.yaml"
    config.write_text(
        f"""
state_dir: {tmp_path / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: 20000, end: 20010}}
store: {{url: "sqlite:///{tmp_path / "fleetdeck.db"}"}}
static_targets:
  - {{name: ghost, url: "http://127.0.0.1:{port}"}}
collectors: {{instances_s: 1}}
dashboard: {{embedded_collector: true}}
"""
    )
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    try:
        app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
        assert not app.exception and not app.sidebar.info  # started, no "unavailable" notice
        app.switch_page("app_pages/instances.py")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            app.run()
            if ":red-badge[DOWN]" in texts(app.markdown):
                break
            time.sleep(0.5)
        assert "`static/ghost` :red-badge[DOWN]" in texts(app.markdown)
        assert "Connection refused" in texts(app.error) or "refused" in texts(app.error).lower()
    finally:
        stop_embedded()
