"""The dashboard pieces of the actions, run with Streamlit's AppTest against a real store (no fleet needed):
the audit page lists and filters entries and offers the CSV; the service panel disables buttons for a viewer
and shows a dry-run preview with a typed confirmation for an operator; the login gate signs a local user in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from actions.auth import Principal, hash_password
from core.store import AuditEntry, Store
from dashboard.app_pages.audit import audit_frame, filter_frame
from tests.support import REPO_ROOT, free_port_block


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = {
        "state_dir": str(tmp_path / "run"),
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{"name": "web", "command": "{python} -c pass --port {port} {instance_id}",
                      "ports": {"start": free_port_block(8), "end": 0}, "replicas": 2, "min_replicas": 1,
                      "max_replicas": 4}],
        "auth": {"users": [{"name": "olga", "role": "operator", "password_hash": hash_password("s3cret")}]},
    }
    data["services"][0]["ports"]["end"] = data["services"][0]["ports"]["start"] + 7
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLEETDECK_CONFIG", str(path))
    return path


def test_importing_the_audit_page_renders_nothing(tmp_path: Path) -> None:
    """Importing a page for its helpers must not run it: it would open (and create) the configured store."""
    store_file = tmp_path / "page-import.db"
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": f"sqlite:///{store_file}"}, "services": []}))
    env = {**os.environ, "FLEETDECK_CONFIG": str(config), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", "import dashboard.app_pages.audit"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not store_file.exists() and not (tmp_path / "data").exists()
    assert "ScriptRunContext" not in done.stderr  # no Streamlit call ran outside a script run


def entry(store: Store, who: str, action: str, result: str, error: str | None = None) -> None:
    store.append_audit(AuditEntry(None, time.time(), f"op-{who}-{action}", who, "operator", action,
                                  {"target": "web/web-1", "via": "cli"}, {}, {}, result, error, 0.25))


def test_audit_page_lists_filters_and_exports(config_file: Path, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/fleetdeck.db")
    entry(store, "alice", "drain", "ok")
    entry(store, "victor", "scale", "refused", "permission denied")
    frame = audit_frame(store.audit())
    assert list(frame["who"]) == ["victor", "alice"]  # newest first
    assert list(filter_frame(frame, ["drain"], [], "", "")["who"]) == ["alice"]
    assert list(filter_frame(frame, [], ["refused"], "", "denied")["who"]) == ["victor"]
    app = AppTest.from_file(str(Path(REPO_ROOT) / "dashboard" / "app_pages" / "audit.py"), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    shown = app.dataframe[0].value
    assert sorted(shown["who"]) == ["alice", "victor"]
    assert set(shown.columns) >= {"who", "role", "action", "target", "result", "error", "duration_s", "before"}
    assert any("CSV" in str(button.proto.label) for button in app.get("download_button"))


def service_panel(role: str) -> None:
    from actions.auth import Principal
    from core.config import load_config
    from core.store import Store
    from dashboard.action_panel import render_service_actions

    config = load_config()
    render_service_actions(config, Store(config.store_url), Principal("someone", role, "dashboard"), "web")


def test_service_panel_disables_buttons_for_a_viewer(config_file: Path) -> None:
    app = AppTest.from_function(service_panel, args=("viewer",), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    buttons = {button.label: button for button in app.button}
    assert buttons["Scale"].disabled and buttons["Rolling restart"].disabled


def test_service_panel_previews_and_asks_for_the_typed_name(config_file: Path) -> None:
    app = AppTest.from_function(service_panel, args=("operator",), default_timeout=30)
    app.run()
    app.number_input[0].set_value(3)
    app.button(key="fd-svc-web-scale").click()
    app.run()
    assert not app.exception, app.exception
    shown = [re.sub(r"\\(.)", r"\1", info.value) for info in app.info]  # outside text is Markdown-escaped
    assert any("Dry run — scale web" in text and "start 3 replica(s): 0 → 3" in text for text in shown), shown
    # scaling up is not disruptive: no typed name needed; a rolling restart of nothing is refused in the preview
    app.button(key="fd-svc-web-rolling").click()
    app.run()
    assert any("no running replicas" in error.value for error in app.error), [e.value for e in app.error]


def login_page() -> None:
    import streamlit as st

    from core.config import load_config
    from dashboard.auth_gate import login_gate

    principal = login_gate(load_config(), allow_anonymous=False)
    st.write(f"principal={tuple(principal) if principal else None}")


def test_login_gate_signs_in_a_local_user(config_file: Path) -> None:
    app = AppTest.from_function(login_page, default_timeout=30)
    app.run()
    assert "principal=None" in app.markdown[-1].value
    app.text_input[0].set_value("olga")
    app.text_input[1].set_value("wrong")
    app.button[0].click()
    app.run()
    assert any("wrong password" in error.value for error in app.error)
    app.text_input[1].set_value("s3cret")
    app.button[0].click()
    app.run()
    assert str(tuple(Principal("olga", "operator", "dashboard"))) in app.markdown[-1].value


def test_preview_respects_the_busy_lock(config_file: Path, tmp_path: Path) -> None:
    """A plan previewed while another action holds the service shows why and keeps Run disabled."""
    store = Store(f"sqlite:///{tmp_path}/fleetdeck.db")
    acquired, _holder = store.acquire_lock("web", "drain", "olga", "op-drain-web-1", 120)
    assert acquired
    app = AppTest.from_function(service_panel, args=("operator",), default_timeout=30)
    app.run()
    app.number_input[0].set_value(3)
    app.button(key="fd-svc-web-scale").click()
    app.run()
    assert not app.exception, app.exception
    assert any("busy: drain by olga" in warning.value for warning in app.warning), [w.value for w in app.warning]
    assert app.button(key="fd-svc-web-scale-run").disabled
    store.release_lock("web", "op-drain-web-1")
    app.run()
    assert not app.button(key="fd-svc-web-scale-run").disabled


def test_previous_result_gives_way_when_run_is_clicked(config_file: Path, tmp_path: Path) -> None:
    """Right after Run the panel shows the new operation starting, not the last one's result."""
    from actions import audit

    store = Store(f"sqlite:///{tmp_path}/fleetdeck.db")
    store.put_kv(audit.op_key("op-previous"), {
        "op_id": "op-previous", "action": "drain", "target": "web/web-1", "who": "olga", "role": "operator",
        "via": "cli", "state": "ok", "message": "PREVIOUS RESULT"})
    store.put_kv(audit.last_op_key("web"), {"op_id": "op-previous"})
    app = AppTest.from_function(service_panel, args=("operator",), default_timeout=30)
    app.run()
    assert any("PREVIOUS RESULT" in s.value for s in app.success)
    app.number_input[0].set_value(1)
    app.button(key="fd-svc-web-scale").click()
    app.run()
    app.button(key="fd-svc-web-scale-run").click()
    app.run()
    assert not app.exception, app.exception
    assert not any("PREVIOUS RESULT" in s.value for s in app.success), "the previous result stayed on screen"
    shown = [i.value for i in app.info] + [s.value for s in app.success] + [e.value for e in app.error]
    assert any("scale" in text for text in shown), shown
    from dashboard.action_panel import RUNNING

    for thread in list(RUNNING.values()):
        thread.join(timeout=60)


def test_readiness_run_needs_preview_and_typed_confirmation(config_file: Path) -> None:
    from dashboard.auth_gate import PRINCIPAL_KEY

    app = AppTest.from_file(str(Path(REPO_ROOT) / "dashboard" / "app_pages" / "scorecard.py"), default_timeout=30)
    app.session_state[PRINCIPAL_KEY] = ("olga", "operator", "dashboard")
    app.run()
    assert not app.exception, app.exception
    # on the real page the button only opens the preview (no run starts on one click)
    from actions.proving import testruns
    from core.config import load_config

    store = Store(load_config().store_url)
    app.button[0].click()
    app.run()
    assert testruns.list_runs(store) == []
    assert any("Dry run — readiness on web" in info.value for info in app.info), [i.value for i in app.info]
    assert app.button(key="fd-readiness-run").disabled
    app.text_input(key="fd-readiness-typed").set_value("web")
    app.run()
    assert not app.button(key="fd-readiness-run").disabled
