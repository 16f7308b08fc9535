"""No password is ever shown: the store URL on an unreachable-store page, DSNs and URLs in messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.redact import redact
from tests.support import free_port

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
SECRET = "Sup3r-S3cret-pw"


def test_redact_urls_dsns_and_named_secrets() -> None:
    assert redact(f"postgresql://fleet:{SECRET}@db:5432/fleet") == "postgresql://fleet:***@db:5432/fleet"
    assert redact(f"redis://:{SECRET}@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert SECRET not in redact(f"host=db user=fleet password={SECRET} dbname=x")
    assert SECRET not in redact(f"host=db password='{SECRET} x' dbname=x")
    assert redact(f"auth failed: {SECRET}", (SECRET,)) == "auth failed: ***"
    assert redact("http://127.0.0.1:8080/health") == "http://127.0.0.1:8080/health"  # nothing to hide


def test_unreachable_store_page_hides_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fleet.yaml"
    # a closed port: the store cannot be opened, and the page says so
    url = f"postgresql://fleet:{SECRET}@127.0.0.1:{free_port()}/fleet?connect_timeout=2"
    config.write_text(f"""
state_dir: {tmp_path / "run"}
services:
  - {{name: web, command: "true {{port}} {{instance_id}}", ports: {{start: 20000, end: 20010}}}}
store: {{url: "{url}"}}
dashboard: {{embedded_collector: false}}
""")
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("app_pages/overview.py").run()
    shown = " ".join(str(e.value) for e in [*app.error, *app.markdown, *app.caption, *app.warning, *app.exception])
    assert "Cannot open the store" in shown, shown
    assert SECRET not in shown and "postgresql://fleet:***@127.0.0.1" in shown, shown
