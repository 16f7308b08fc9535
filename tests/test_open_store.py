"""One way to open the store: `core.store.open_store(config)`, used by the fleet, the CLI and the dashboard, applies
the config's `store` settings (before, the dashboard opened it by URL only and embedded collectors ignored the
retention settings). Fast tier: a temporary SQLite file, no services."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import parse_config
from core.store import open_store

pytestmark = pytest.mark.fast


def _config_data(tmp_path: Path) -> dict[str, object]:
    return {
        "state_dir": str(tmp_path / "run"),
        "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20009}}],
        "store": {"url": "sqlite:///data/fd.db", "raw_retention_h": 5, "minute_retention_d": 2, "hour_retention_d": 30},
    }


def test_open_store_resolves_the_url_and_applies_the_retention(tmp_path: Path) -> None:
    config = parse_config(_config_data(tmp_path), "test", tmp_path)
    store = open_store(config)
    try:
        assert store.url == f"sqlite:///{tmp_path / 'data' / 'fd.db'}"  # relative to the config file's directory
        assert (store.config.raw_retention_h, store.config.minute_retention_d, store.config.hour_retention_d) == (
            5, 2, 30)
    finally:
        store.close()


def test_the_dashboard_opens_the_store_with_its_settings(tmp_path: Path) -> None:
    from dashboard import ui

    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(_config_data(tmp_path)))
    store = ui._store_at(str(path))
    try:
        assert store.config.raw_retention_h == 5 and store.config.hour_retention_d == 30
    finally:
        store.close()
        ui._store_at.clear()
