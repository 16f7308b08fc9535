"""The Instances page and `fleetdeck status` show the autoscaler's latest recommendation and why (advise mode)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from actions.autoscale import Autoscaler, advice_lines
from actions.backends.local import LocalOrchestrator
from actions.operations import limits_key
from cli.main import main
from core.config import FleetConfig, load_config
from core.samples import Sample
from core.store import Store
from tests.support import free_port_block
from tests.support_standin import cleanup, write_standin
from tests.test_dashboard_pages import APP, TIMEOUT_S, texts


def test_advise_mode_recommendation_is_on_the_instances_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    port = free_port_block(11)
    path.write_text(f"""
state_dir: {tmp_path / "run"}
services:
  - name: web
    command: "{{python}} {write_standin(tmp_path)} --port {{port}} --instance-id {{instance_id}}"
    ports: {{start: {port}, end: {port + 10}}}
store: {{url: "sqlite:///{tmp_path / "fleetdeck.db"}"}}
dashboard: {{embedded_collector: false}}
autoscale:
  web: {{mode: advise, cpu_percent: 50}}
""")
    config = load_config(path)
    store = Store(config.store_url)
    try:
        recommendation_shown(config, store, path, monkeypatch, capsys)
    finally:
        cleanup(config)
        store.close()


def recommendation_shown(config: FleetConfig, store: Store, path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """Two real replicas (stand-ins, tests/test_local_backend.py): the autoscaler counts what the backend lists."""
    service = config.service("web")
    orchestrator = LocalOrchestrator(config, store)
    replicas = [orchestrator.wait_healthy(service, orchestrator.start(service)) for _ in (1, 2)]
    now = time.time()  # two running replicas at 90 % CPU: the policy wants ceil(2 × 90 / 50) = 4
    store.write_samples([Sample("instance", f"web/{r.instance_id}", "cpu_percent", 90, now, "percent")
                         for r in replicas])
    record = Autoscaler(config, store).evaluate("web", config.autoscale["web"], now)
    assert (record["current"], record["desired"], record["acted"]) == (2, 4, False)
    assert record["why_not"] == "mode is advise: recommendation only"
    # an admin's limits override caps the decision like the config's bounds would
    store.put_kv(limits_key("web"), {"min_replicas": 1, "max_replicas": 3, "by": "root", "ts": now})
    capped = Autoscaler(config, store).evaluate("web", config.autoscale["web"], now + 1)
    assert capped["desired"] == 3 and list(capped["bounds"]) == [1, 3] and "capped at max 3" in capped["summary"]
    store.delete_kv(limits_key("web"))
    Autoscaler(config, store).evaluate("web", config.autoscale["web"], now + 2)
    [line] = advice_lines(config, store)
    assert "scale up 2 → 4" in line and "ceil(2 × 90% / 50%) = 4" in line and "mode is advise" in line
    capsys.readouterr()
    assert main(["--config", str(path), "autoscale", "status"]) == 0
    assert "not acted: mode is advise: recommendation only" in capsys.readouterr().out
    assert main(["--config", str(path), "autoscale", "decisions", "web", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)[-1]
    assert stored["desired"] == 4 and stored["observation"]["cpu_percent"] == 90
    monkeypatch.setenv("FLEETDECK_CONFIG", str(path))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.run()
    app.switch_page("app_pages/instances.py").run()
    assert not app.exception, [e.value for e in app.exception]
    assert line in texts(app.caption)
