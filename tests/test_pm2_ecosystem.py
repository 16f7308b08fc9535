"""Adopting an existing PM2 ecosystem file (`pm2_ecosystem`, core/pm2_ecosystem.py): fleetdeck reads the app's
name, script, instances, exec_mode and env (increment_var: one port per instance) from the file, evaluated by node
like pm2 does; values stated in fleet.yaml win; errors name the file and the key. The end-to-end test runs the
dependency-free stand-in app (tests/node_standin/app.js) under a real PM2 daemon through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from actions.backends.pm2 import PM2_BINARY, Pm2Orchestrator
from core import pm2_ecosystem
from core.config import ConfigError, load_config, parse_config
from core.pm2_ecosystem import load_apps
from core.process import http_get, pid_alive
from core.store import Store
from tests.support import REPO_ROOT, cli_roles_for_this_user, free_port, free_port_block

FLEETDECK = os.path.join(REPO_ROOT, "fleetdeck")
STANDIN = Path(REPO_ROOT) / "tests" / "node_standin" / "app.js"

ECOSYSTEM = """\
// an ordinary PM2 ecosystem file, as a user would have it: computed values, a comment, a log line on load
const base = {base_port};
console.log('loading the ecosystem file');
module.exports = {{
  apps: [{{
    name: 'shop',
    script: '{script}',
    exec_mode: 'fork',
    instances: 2,
    increment_var: 'PORT',
    env: {{ PORT: base, GREETING: 'from-the-ecosystem-file', JSON_VALUE: '{{"a": 1}}', NODE_ENV: 'production' }},
  }}],
}};
"""


def write_ecosystem(directory: Path, base_port: int, script: Path = STANDIN) -> Path:
    path = directory / "ecosystem.config.js"
    path.write_text(ECOSYSTEM.format(base_port=base_port, script=script))
    return path


def test_the_app_is_read_from_a_javascript_ecosystem_file(tmp_path: Path) -> None:
    base = 41000
    write_ecosystem(tmp_path, base)
    config = parse_config({"services": [{"backend": "pm2", "pm2_ecosystem": "ecosystem.config.js"}]}, "fleet.yaml",
                          tmp_path)
    service = config.services[0]
    assert service.name == "shop"
    assert service.replicas == 2 and service.pm2_exec_mode == "fork"
    assert (service.ports.start, service.ports.end) == (base, base + 7)  # PORT is the base, room for max_replicas
    assert service.command == f"node {STANDIN}"
    assert service.pm2_cwd == str(tmp_path)
    orchestrator = Pm2Orchestrator(config, Store("sqlite://"))
    env = orchestrator.render_env(service, base + 1, "shop-2")
    assert env["PORT"] == str(base + 1), "increment_var: each replica gets its own port"
    assert env["GREETING"] == "from-the-ecosystem-file"
    assert env["JSON_VALUE"] == '{"a": 1}', "the file's braces are literal, not placeholders"


def test_values_stated_in_fleet_yaml_win(tmp_path: Path) -> None:
    write_ecosystem(tmp_path, 41000)
    config = parse_config({"services": [{
        "name": "web", "backend": "pm2", "pm2_ecosystem": str(tmp_path / "ecosystem.config.js"),
        "replicas": 3, "ports": {"start": 42000, "end": 42009}, "env": {"GREETING": "from-fleet-yaml"},
    }]}, "fleet.yaml", Path("/"))
    service = config.services[0]
    assert (service.name, service.replicas, service.ports.start) == ("web", 3, 42000)
    assert service.env["GREETING"] == "from-fleet-yaml"
    assert service.env["PORT"] == "{port}" and service.env["NODE_ENV"] == "production"


def test_json_and_yaml_ecosystem_files_are_not_executed(tmp_path: Path) -> None:
    (tmp_path / "eco.json").write_text(json.dumps({"apps": [{"name": "api", "script": "app.js", "instances": 3,
                                                             "exec_mode": "cluster_mode", "env": {"PORT": 43000}}]}))
    config = parse_config({"services": [{"backend": "pm2", "pm2_ecosystem": "eco.json"}]}, "fleet.yaml", tmp_path)
    service = config.services[0]
    assert (service.name, service.replicas, service.pm2_exec_mode, service.ports.start) == ("api", 3, "cluster",
                                                                                            43000)
    assert service.env["PORT"] == "43000", "cluster mode: every instance shares the one port"
    (tmp_path / "eco.yaml").write_text(yaml.safe_dump({"apps": [{"name": "a", "script": "a.js"},
                                                                {"name": "b", "script": "b.js", "instances": "max"}]}))
    two = parse_config({"services": [{"backend": "pm2", "pm2_ecosystem": "eco.yaml", "pm2_app": "b",
                                      "ports": {"start": 44000, "end": 44099}}]}, "fleet.yaml", tmp_path)
    assert two.services[0].name == "b" and two.services[0].replicas == (os.cpu_count() or 1)


@pytest.mark.parametrize(("content", "expected"), [
    ("module.exports = {apps: [{name: 'shop', script: 'a.js', instances: 'lots'}]}", "apps[0].instances"),
    ("module.exports = {apps: [{name: 'Shop Front', script: 'a.js'}]}", "apps[0].name"),
    ("module.exports = {apps: [{name: 'shop'}]}", "apps[0].script"),
    ("module.exports = {apps: [{name: 'shop', script: 'a.js', node_args: 5}]}", "apps[0].node_args"),
    ("module.exports = {apps: [{name: 'shop', script: 'a.js', exec_mode: 'swarm'}]}", "apps[0].exec_mode"),
    ("module.exports = {apps: [{name: 'shop', script: 'a.js', env: {A: {b: 1}}}]}", "apps[0].env.A"),
    ("module.exports = {apps: [{name: 'shop', script: 'a.js', increment_var: 'PORT', env: {PORT: 'x'}}]}",
     "apps[0].env.PORT"),
    ("module.exports = {apps: [{name: 'a', script: 'a.js'}, {name: 'b', script: 'b.js'}]}", "pm2_app"),
    ("throw new Error('broken ecosystem')", "broken ecosystem"),
    ("while (true) {}", "within"),
    ("for (;;) require('fs').writeSync(1, 'x'.repeat(65536));", "more than 1048576 bytes"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, content: str, expected: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pm2_ecosystem, "LOADER_TIMEOUT_S", 3.0)  # the endless loop is stopped after this
    (tmp_path / "ecosystem.config.js").write_text(content)
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": [{"backend": "pm2", "pm2_ecosystem": "ecosystem.config.js",
                                    "ports": {"start": 45000, "end": 45009}}]}, "fleet.yaml", tmp_path)
    message = str(caught.value)
    assert message.startswith("fleet.yaml: services[0].pm2_ecosystem: ") and "ecosystem.config.js" in message
    assert expected in message, message


def test_a_value_from_the_file_that_fails_validation_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "eco.json").write_text(json.dumps({"apps": [{"name": "api", "script": "a.js",
                                                             "env": {"PORT": 65530}}]}))
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": [{"backend": "pm2", "pm2_ecosystem": "eco.json"}]}, "fleet.yaml", tmp_path)
    assert "services.0.ports" in str(caught.value) and "from the ecosystem file eco.json" in str(caught.value)


def test_the_loader_ignores_what_the_file_prints(tmp_path: Path) -> None:
    path = write_ecosystem(tmp_path, 41000)
    assert [app["name"] for app in load_apps(path)] == ["shop"]


def test_up_and_down_with_only_the_ecosystem_file_configured(tmp_path: Path) -> None:
    assert PM2_BINARY.exists(), "pm2 is missing: `make express-app` (run by make test) installs it with npm ci"
    base = free_port_block(8)
    write_ecosystem(tmp_path, base)
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{"backend": "pm2", "pm2_ecosystem": "ecosystem.config.js"}],
        "load_balancer": {"service": "shop", "listen": f"127.0.0.1:{free_port()}", "worker_processes": 1,
                          "worker_shutdown_timeout_s": 5},
        "auth": {"cli_roles": cli_roles_for_this_user("admin")},
    }))

    def fleetdeck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FLEETDECK, "--config", str(fleet_file), *args], capture_output=True, text=True,
                              timeout=120, check=False)

    config = load_config(fleet_file)
    orchestrator = Pm2Orchestrator(config, Store(config.store_url))
    up = fleetdeck("up", "--no-dashboard")
    daemon = orchestrator.daemon_pid()
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        apps = {str(a["name"]): a for a in orchestrator.jlist()}
        assert sorted(apps) == ["shop-1", "shop-2"], "name and instances came from the file"
        ports = set()
        for name, app in apps.items():
            assert app["pm2_env"]["status"] == "online"
            assert app["pm2_env"]["pm_cwd"] == str(tmp_path), "the app runs where the ecosystem file is"
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{app['pid']}/environ").read_bytes().decode().split("\0") if "=" in item)
            assert environ["GREETING"] == "from-the-ecosystem-file" and environ["NODE_ENV"] == "production"
            port = int(environ["PORT"])
            status, body = http_get(f"http://127.0.0.1:{port}/health", 3)
            assert status == 200 and json.loads(body)["pid"] == app["pid"], name
            ports.add(port)
        assert ports == {base, base + 1}, "increment_var PORT: one port per instance from the file's base"
        lb = config.load_balancer
        assert lb is not None
        status, body = http_get(f"http://{lb.listen}/health", 3)
        assert status == 200 and json.loads(body)["port"] in ports, "nginx routes to the adopted replicas"
        shown = fleetdeck("status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["services"]["shop"]["running"] == 2
    finally:
        down = fleetdeck("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert daemon is not None and not pid_alive(daemon), "down stops fleetdeck's PM2 daemon"
    assert Store(config.store_url).replicas() == []
