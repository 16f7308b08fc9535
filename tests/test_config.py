"""The configuration file: the shipped ones load, and every kind of mistake names the file, the key and the fix."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import ConfigError, config_path, load_config, parse_config
from tests.support import REPO_ROOT

pytestmark = pytest.mark.fast  # no services: the fast tier

DEMO = Path(REPO_ROOT) / "fleet.yaml"
COMPOSE = Path(REPO_ROOT) / "compose" / "fleet.compose.yaml"


def demo_data() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text())


def error_of(data: object, source: str = "fleet.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source)
    return str(caught.value)


def test_the_shipped_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # the Compose config has no default database password: docker-compose.yml passes the URLs in, built from
    # FLEETDECK_DB_PASSWORD; without them the config names the missing variable
    for name in ("FLEETDECK_DATABASE_URL", "FLEETDECK_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="FLEETDECK_DATABASE_URL"):
        load_config(COMPOSE)
    monkeypatch.setenv("FLEETDECK_DATABASE_URL", "postgresql://fleetdeck:pw@postgres:5432/fleetdeck")
    monkeypatch.setenv("FLEETDECK_STORE_URL", "postgresql+psycopg://fleetdeck:pw@postgres:5432/fleetdeck")
    demo = load_config(DEMO)
    web = demo.service("web")
    assert (web.replicas, web.min_replicas, web.max_replicas) == (3, 1, 8)
    assert demo.load_balancer is not None and demo.load_balancer.listen == "127.0.0.1:8080"
    assert demo.store_url == f"sqlite:///{REPO_ROOT}/data/fleetdeck.db"  # relative path made absolute
    assert {u.role for u in demo.auth.users} == {"admin", "operator", "viewer"}
    assert load_config(COMPOSE).services[0].backend == "docker"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["services"][0].update(replicsa=3), "services.0.replicsa: unknown key"),
        (lambda d: d.update(colectors={}), "colectors: unknown key"),
        (lambda d: d["services"][0].pop("ports"), "services.0.ports: required key is missing"),
        (lambda d: d["services"][0].update(replicas="three"), "services.0.replicas: "),
        (lambda d: d["services"][0].update(backend="nomad"), "services.0.backend: "),
        (lambda d: d["services"][0].update(replicas=9), "replicas (9) must be within [min_replicas, max_replicas]"),
        (lambda d: d["services"][0].update(ports={"start": 9000, "end": 8000}), "end (8000) must be >= start"),
        (lambda d: d["services"][0].update(ports={"start": 9000, "end": 9002}), "fewer ports than max_replicas"),
        (lambda d: d["services"][0].pop("command"), "backend 'local' needs 'command'"),
        (lambda d: d["load_balancer"].update(service="api"), "load_balancer.service 'api' is not one of"),
        (lambda d: d["collectors"].update(instances_s=0.2), "collectors.instances_s: "),
        (lambda d: d["auth"]["users"][0].update(role="root"), "auth.users.0.role: "),
        (lambda d: d["services"].append(copy.deepcopy(d["services"][0])), "repeated: web"),
    ],
)
def test_a_mistake_names_the_file_and_the_key(mutate: Any, expected: str) -> None:
    data = demo_data()
    mutate(data)
    message = error_of(data)
    assert message.startswith("fleet.yaml: invalid configuration"), message
    assert expected in message, message


def test_environment_references_are_expanded_and_a_missing_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    data = demo_data()
    data["postgres"][0]["dsn"] = "${FD_TEST_DSN}"
    monkeypatch.setenv("FD_TEST_DSN", "postgresql://127.0.0.1:5432/elsewhere")
    assert parse_config(data, "fleet.yaml").postgres[0].dsn == "postgresql://127.0.0.1:5432/elsewhere"
    monkeypatch.delenv("FD_TEST_DSN")
    assert "postgres[0].dsn: environment variable FD_TEST_DSN is not set" in error_of(data)
    data["postgres"][0]["dsn"] = "${FD_TEST_DSN:-postgresql://127.0.0.1/fallback}"
    assert parse_config(data, "fleet.yaml").postgres[0].dsn == "postgresql://127.0.0.1/fallback"


def test_unreadable_or_malformed_files_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("services: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(listed)


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLEETDECK_CONFIG", raising=False)
    assert config_path() == DEMO.resolve()
    monkeypatch.setenv("FLEETDECK_CONFIG", str(tmp_path / "env.yaml"))
    assert config_path() == (tmp_path / "env.yaml").resolve()
    assert config_path(tmp_path / "flag.yaml") == (tmp_path / "flag.yaml").resolve()


def test_the_cli_refuses_a_bad_file_before_doing_anything(tmp_path: Path) -> None:
    data = demo_data()
    data["services"][0]["replicsa"] = 3
    data["state_dir"] = str(tmp_path / "state")
    bad = tmp_path / "fleet.yaml"
    bad.write_text(yaml.safe_dump(data))
    done = subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(bad), "up"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{bad}: invalid configuration" in done.stderr
    assert "services.0.replicsa: unknown key" in done.stderr
    assert not (tmp_path / "state").exists(), "nothing may start (not even the state dir) on a bad config"
