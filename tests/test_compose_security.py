"""The reference Compose stack: dashboard on loopback without the Docker socket, no default database password
(Compose refuses to start, naming the variable). `docker-compose config` only renders the file: no daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT

COMPOSE_DIR = Path(REPO_ROOT) / "compose"
COMPOSE = shutil.which("docker-compose")


@pytest.fixture(autouse=True)
def compose_installed() -> None:
    """make test installs docker-compose: a missing one is a broken set-up, reported as a failure, not a skip."""
    assert COMPOSE is not None, "docker-compose is missing: scripts/ensure-system-packages.sh test installs it"


def render(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETDECK_")}
    return subprocess.run([str(COMPOSE), "-f", "docker-compose.yml", "config"], cwd=COMPOSE_DIR,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False)


def test_missing_database_password_fails_fast_naming_the_variable() -> None:
    done = render()
    assert done.returncode != 0
    assert "FLEETDECK_DB_PASSWORD" in done.stderr, done.stderr


def test_dashboard_is_loopback_only_and_has_no_docker_socket() -> None:
    done = render(FLEETDECK_DB_PASSWORD="pw-from-the-operator")
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    dashboard = services["dashboard"]
    published = [str(p) for p in dashboard["ports"]]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert not any("docker.sock" in str(v) for v in dashboard.get("volumes", [])), dashboard["volumes"]
    assert any("docker.sock" in str(v) for v in services["collector"]["volumes"])  # the one that acts keeps it
    assert "fleetdeck:fleetdeck@" not in done.stdout  # no default password left anywhere
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-from-the-operator"


def test_streamlit_config_binds_loopback() -> None:
    config = (Path(REPO_ROOT) / ".streamlit" / "config.toml").read_text()
    import tomllib

    assert tomllib.loads(config)["server"]["address"] == "127.0.0.1"
