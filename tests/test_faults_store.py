"""fleetdeck's own store failing (issue 17): a Postgres store cut for real behind a TCP proxy.

Samples that cannot be written wait in a bounded buffer and are written when the store is back; the dropped ones
are counted; the heartbeat file tells `status` and the dashboard (every page) about it within one flush.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from streamlit.testing.v1 import AppTest

from collectors.instances import REGISTRY as INSTANCE
from collectors.scheduler import CollectorScheduler
from core.config import parse_config
from core.store import Store
from dashboard.fault_panels import self_health_lines
from tests.support import REPO_ROOT
from tests.support_faults import TcpProxy

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def store_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def batch(n: int, ts: float, tag: str) -> list:
    return [INSTANCE.sample(f"web/{tag}-{i}", "latency_ms", float(i), ts) for i in range(n)]


def texts(app: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*app.error, *app.warning, *app.caption])


@pytest.fixture
def proxy(pg_dsn: str) -> TcpProxy:
    parts = urlsplit(pg_dsn)
    proxied = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield proxied
    proxied.close()


def test_samples_are_buffered_while_the_store_is_down_and_written_after(
    tmp_path: Path, pg_dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config({
        "state_dir": str(tmp_path / "run"),
        "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "store": {"url": store_url(through(pg_dsn, proxy))},
        "dashboard": {"embedded_collector": False},
    })
    store = Store(config.store_url)
    scheduler = CollectorScheduler(config, store, collectors=[])
    scheduler.writer.max_backlog = 50
    now = time.time()
    scheduler.pending.put(batch(5, now, "before"))
    assert scheduler.flush() == 5

    proxy.cut()  # the fault: the store's server is unreachable
    scheduler.pending.put(batch(30, now + 1, "during"))
    assert scheduler.flush() == 0
    assert len(scheduler.writer.backlog) == 30
    lines = self_health_lines(config, time.time())
    assert any(level == "error" and "store is not accepting writes" in text and "30 sample(s) are buffered" in text
               for level, text in lines), lines
    scheduler.pending.put(batch(30, now + 2, "overflow"))  # more than the buffer holds: the oldest go
    scheduler.flush()
    assert scheduler.writer.dropped_total == 10 and len(scheduler.writer.backlog) == 50

    # every page shows it (the dashboard reads the heartbeat, not the store, for this)
    dashboard_config = tmp_path / "fleet.yaml"
    dashboard_config.write_text(
        f"state_dir: {tmp_path / 'run'}\nstore: {{url: 'sqlite:///{tmp_path / 'board.db'}'}}\n"
        "services: [{name: web, command: 'true {port} {instance_id}', ports: {start: 20000, end: 20010}}]\n"
        "dashboard: {embedded_collector: false}\n"
    )
    monkeypatch.setenv("FLEETDECK_CONFIG", str(dashboard_config))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    for page in ("overview", "queues"):
        app.switch_page(f"app_pages/{page}.py").run()
        assert not app.exception, [e.value for e in app.exception]
        shown = texts(app)
        assert "store is not accepting writes" in shown and "10 sample(s) were dropped" in shown, shown

    proxy.restore()
    deadline = time.monotonic() + 20
    while scheduler.writer.backlog and time.monotonic() < deadline:
        scheduler.flush()  # the first attempt may meet a connection the cut broke; the next one succeeds
        time.sleep(0.2)
    assert not scheduler.writer.backlog and scheduler.writer.last_error is None
    written = {s.target for s in Store(store_url(pg_dsn)).find_series(source="instance", metric="latency_ms")}
    assert {f"web/during-{i}" for i in range(10, 30)} <= written  # kept through the outage
    assert {f"web/overflow-{i}" for i in range(30)} <= written
    lines = self_health_lines(config, time.time())
    assert not any(level == "error" for level, _ in lines), lines
    assert any("10 sample(s) were dropped" in text for _, text in lines)  # the gap stays explained


def test_status_still_reports_when_the_store_cannot_be_opened(tmp_path: Path, proxy: TcpProxy, pg_dsn: str) -> None:
    """The store's Postgres is cut: `status` names the store as the problem (exit 3), no traceback."""
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(
        f"state_dir: {tmp_path / 'run'}\nstore: {{url: '{store_url(through(pg_dsn, proxy))}'}}\n"
        "services: [{name: web, command: 'true {port} {instance_id}', ports: {start: 20000, end: 20010}}]\n"
    )
    proxy.cut()
    shown = subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(config_file), "status"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert "Traceback" not in shown.stderr
    assert "PROBLEM: store" in shown.stdout and "cannot be opened" in shown.stdout, shown.stdout
    assert "fleetdeck processes:" in shown.stdout
