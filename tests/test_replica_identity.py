"""Replica identity in the local backend: any command shape (env, sh -c, npm start, node) runs, each replica is
recognised by what fleetdeck spawned (pid + start time, process group, environment marker), and `up`/`down` say the
truth when replicas fail or leave processes behind. Real node/npm/sh processes throughout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions import fleet
from actions.auth import Principal
from actions.backends.base import DEAD, RUNNING, STARTING, FleetError
from actions.backends.local import LocalOrchestrator, render_template
from core.config import FleetConfig, parse_config
from core.process import http_get
from core.replica_process import MARKER_VAR, ReplicaProcess, environ_marker, marked_processes, start_ticks
from core.store import Store
from tests.support import REPO_ROOT, free_port_block

NODE_STANDIN = Path(REPO_ROOT) / "tests" / "node_standin"

# Every way an operator may write the command of an app configured by its environment.
COMMANDS: dict[str, dict[str, object]] = {
    "env wrapper": {"command": "env PORT={port} INSTANCE_ID={instance_id} node {root}/tests/node_standin/app.js"},
    "service env": {"command": "node {root}/tests/node_standin/app.js",
                    "env": {"PORT": "{port}", "INSTANCE_ID": "{instance_id}"}},
    "sh -c": {"command": "sh -c 'node {root}/tests/node_standin/app.js; exit $?'",
              "env": {"PORT": "{port}", "INSTANCE_ID": "{instance_id}"}},
    "npm start": {"command": "npm start --silent --prefix {root}/tests/node_standin",
                  "env": {"PORT": "{port}", "INSTANCE_ID": "{instance_id}"}},
}

HARNESS = Principal("test-harness", "admin", "cli")  # up/down are admin, audited verbs


def node_config(tmp_path: Path, replicas: int = 3, **service: object) -> FleetConfig:
    start = free_port_block(8)
    data = {
        "state_dir": str(tmp_path / "run"),
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{
            "name": "web", "backend": "local",
            "ports": {"start": start, "end": start + 7},
            "replicas": replicas, "min_replicas": 1, "max_replicas": 6,
            "stop_grace_s": 5, "boot_timeout_s": 20,
            **service,
        }],
    }
    return parse_config(data, "test", tmp_path)


def fleet_processes(config: FleetConfig) -> list[int]:
    return marked_processes(LocalOrchestrator(config, Store(config.store_url)).fleet_marker_prefix)


def kill_fleet(config: FleetConfig) -> None:
    """Whatever a test left running, found by the fleet's marker (never by name) and killed."""
    for pid in fleet_processes(config):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cleanup() -> Iterator[list[FleetConfig]]:
    configs: list[FleetConfig] = []
    yield configs
    for config in configs:
        kill_fleet(config)


def test_render_template_leaves_other_braces_alone() -> None:
    values = {"port": "9101", "instance_id": "web-1", "service": "web", "python": "/py", "root": "/r"}
    assert render_template("{python} {root}/a.py --port {port} {service}/{instance_id}", values) == \
        "/py /r/a.py --port 9101 web/web-1"
    assert render_template('{"a": 1, "port": {port}} {{port}} {unknown}', values) == \
        '{"a": 1, "port": 9101} {port} {unknown}'


@pytest.mark.parametrize("shape", list(COMMANDS))
def test_any_command_shape_runs_distinct_replicas(tmp_path: Path, shape: str,
                                                  cleanup: list[FleetConfig]) -> None:
    config = node_config(tmp_path, **COMMANDS[shape])
    cleanup.append(config)
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    service = config.service("web")
    started = [orchestrator.start(service) for _ in range(3)]
    # Right after the spawns — when /proc/<pid>/cmdline may still read empty — nothing is marked dead.
    assert [r.state for r in orchestrator.list(service)] == [STARTING] * 3
    healthy = [orchestrator.wait_healthy(service, r) for r in started]
    assert sorted(r.instance_id for r in healthy) == ["web-1", "web-2", "web-3"]
    assert len({r.port for r in healthy}) == 3
    for replica in healthy:
        status, body = http_get(f"{replica.base_url}/health", 2)
        assert status == 200, (shape, replica)
        answer = json.loads(body)
        assert (answer["instanceId"], answer["port"]) == (replica.instance_id, replica.port)
    assert [r.state for r in orchestrator.list(service)] == [RUNNING] * 3

    # stop one: every process of that replica (npm, sh and node alike) is gone, the others keep running
    victim = healthy[1]
    identity = ReplicaProcess.decode(next(r.ref for r in store.replicas() if r.instance_id == victim.instance_id),
                                     victim.pid)
    assert identity is not None and identity.marker
    members = identity.members()
    assert members, "the replica's processes are found by identity"
    orchestrator.stop(service, victim.instance_id)
    assert [p for p in members if Path(f"/proc/{p}").exists() and environ_marker(p) == identity.marker] == []
    assert http_get(f"{victim.base_url}/health", 1)[0] == 0
    assert sorted(r.instance_id for r in orchestrator.list(service)) == ["web-1", "web-3"]
    for replica in (healthy[0], healthy[2]):
        assert http_get(f"{replica.base_url}/health", 2)[0] == 200


def test_recycled_pid_is_neither_adopted_nor_signalled(tmp_path: Path, cleanup: list[FleetConfig]) -> None:
    config = node_config(tmp_path, **COMMANDS["service env"])
    cleanup.append(config)
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    service = config.service("web")
    replica = orchestrator.wait_healthy(service, orchestrator.start(service))
    record = next(r for r in store.replicas() if r.instance_id == replica.instance_id)
    # Another program now holds a recorded pid: a stranger whose start time differs from the recorded one.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = start_ticks(stranger.pid)
        assert ticks is not None
        fake = ReplicaProcess(stranger.pid, ticks - 1, None)
        store.upsert_replica(record._replace(instance_id="web-9", pid=stranger.pid, ref=fake.encode()))
        states = {r.instance_id: r.state for r in orchestrator.list(service)}
        assert states == {"web-1": RUNNING, "web-9": DEAD}
        orchestrator.stop(service, "web-9")
        assert stranger.poll() is None, "a recycled pid must never be signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_reaches_a_child_that_left_the_process_group(tmp_path: Path, cleanup: list[FleetConfig]) -> None:
    config = node_config(tmp_path, **COMMANDS["npm start"])
    cleanup.append(config)
    orchestrator = LocalOrchestrator(config, Store(config.store_url))
    service = config.service("web")
    service = service.model_copy(update={"env": {**service.env, "SPAWN_DETACHED": "1"}})
    replica = orchestrator.wait_healthy(service, orchestrator.start(service))
    log_text = orchestrator.log_path(replica.instance_id).read_text()
    detached = int(log_text.split("detached child ")[1].split()[0])
    assert environ_marker(detached) is not None
    orchestrator.stop(service, replica.instance_id)
    assert fleet_processes(config) == [], "the detached child carries the marker and is stopped too"


def test_up_names_each_replica_that_failed(tmp_path: Path, cleanup: list[FleetConfig]) -> None:
    config = node_config(tmp_path, **{**COMMANDS["npm start"],
                                      "env": {"PORT": "{port}", "INSTANCE_ID": "{instance_id}",
                                              "CRASH_INSTANCE": "web-2"}})
    cleanup.append(config)
    lines: list[str] = []
    with pytest.raises(FleetError) as raised:
        fleet.up(config, principal=HARNESS, dashboard=False, progress=lines.append)
    message = str(raised.value)
    assert "web: 2 of 3 replica(s) healthy" in message
    assert "web-2 exited during start-up" in message and "crash-marker" in message
    assert "web-1" not in message.split("healthy", 1)[1] and "web-3" not in message.split("healthy", 1)[1]
    orchestrator = LocalOrchestrator(config, Store(config.store_url))
    # the failed replica is not left recorded or running; the healthy ones stay for the next `up` to adopt
    assert sorted(r.instance_id for r in orchestrator.list(config.service("web"))) == ["web-1", "web-3"]
    fleet.down(config, principal=HARNESS)
    assert fleet_processes(config) == []


def test_up_fails_when_the_app_ignores_its_port(tmp_path: Path, cleanup: list[FleetConfig]) -> None:
    """The app listens on one fixed port whatever fleetdeck asks: at most one replica can come up, and `up` says
    which ones did not and why instead of printing a URL with fewer servers than asked for."""
    fixed = free_port_block(1)
    config = node_config(tmp_path, command="node {root}/tests/node_standin/app.js",
                         env={"PORT": str(fixed), "INSTANCE_ID": "{instance_id}"},
                         boot_timeout_s=4)
    cleanup.append(config)
    with pytest.raises(FleetError) as raised:
        fleet.up(config, principal=HARNESS, dashboard=False, progress=lambda _line: None)
    message = str(raised.value)
    assert "of 3 replica(s) healthy" in message
    assert message.count("did not become healthy") + message.count("exited during start-up") == 3
    assert "EADDRINUSE" in message or "no answer" in message
    fleet.down(config, principal=HARNESS)
    assert fleet_processes(config) == []


def test_down_stops_dead_and_lost_replicas_processes(tmp_path: Path, cleanup: list[FleetConfig]) -> None:
    config = node_config(tmp_path, **COMMANDS["npm start"])
    cleanup.append(config)
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    service = config.service("web")
    replicas = [orchestrator.wait_healthy(service, orchestrator.start(service)) for _ in range(3)]
    assert len(fleet_processes(config)) >= 6  # npm (+ sh) + node per replica

    # web-1: npm killed -9, its node child orphaned but still serving → the record says dead
    os.kill(replicas[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while orchestrator.list(service)[0].state != DEAD and time.monotonic() < deadline:
        time.sleep(0.1)
    assert orchestrator.list(service)[0].state == DEAD
    assert http_get(f"{replicas[0].base_url}/health", 2)[0] == 200, "the orphan still runs"
    # web-2: its record is lost altogether
    store.remove_replica("web", replicas[1].instance_id)

    lines: list[str] = []
    summary = fleet.down(config, principal=HARNESS, progress=lines.append)
    assert sorted(summary["replicas"]) == ["web-1", "web-3"]
    assert summary["strays"], "the processes of the lost record were found by the marker"
    assert fleet_processes(config) == []
    for replica in replicas:
        assert http_get(f"{replica.base_url}/health", 1)[0] == 0
    assert any("no replica record accounted for" in line for line in lines)


def test_down_reports_what_it_could_not_stop(tmp_path: Path, cleanup: list[FleetConfig],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that survives SIGKILL cannot be produced here (tests run as root, and a process stuck in
    uninterruptible sleep needs a hung filesystem), so signals to one replica's processes are dropped on purpose:
    the real process keeps running and `down` must say so and exit non-zero."""
    config = node_config(tmp_path, replicas=2, **COMMANDS["service env"])
    cleanup.append(config)
    store = Store(config.store_url)
    orchestrator = LocalOrchestrator(config, store)
    service = config.service("web")
    first, second = (orchestrator.wait_healthy(service, orchestrator.start(service)) for _ in range(2))
    immune = {second.pid}
    real_kill, real_killpg = os.kill, os.killpg

    def kill(pid: int, sig: int) -> None:
        if pid not in immune:
            real_kill(pid, sig)

    def killpg(group: int, sig: int) -> None:
        if group not in immune:
            real_killpg(group, sig)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", killpg)
    with pytest.raises(FleetError) as raised:
        fleet.down(config, principal=HARNESS, progress=lambda _line: None)
    assert f"web/web-2: web-2: pid(s) {second.pid} survived SIGKILL" in str(raised.value)
    assert http_get(f"{first.base_url}/health", 1)[0] == 0, "everything else was still stopped"
    # the record is kept so a later down can find the process again
    assert [r.instance_id for r in store.replicas()] == ["web-2"]
    monkeypatch.undo()
    fleet.down(config, principal=HARNESS)
    assert fleet_processes(config) == []
    assert MARKER_VAR not in os.environ



@pytest.mark.parametrize("shape", ["service env", "sh -c"])
def test_stop_delivers_one_sigterm_to_the_app(tmp_path: Path, shape: str, cleanup: list[FleetConfig]) -> None:
    """The group and the individual pids are signalled without overlap: apps take a second SIGTERM as "exit now"
    and would drop their in-flight work."""
    config = node_config(tmp_path, **COMMANDS[shape])
    cleanup.append(config)
    orchestrator = LocalOrchestrator(config, Store(config.store_url))
    service = config.service("web")
    for _ in range(3):
        replica = orchestrator.wait_healthy(service, orchestrator.start(service))
        orchestrator.stop(service, replica.instance_id)
        log_text = orchestrator.log_path(replica.instance_id).read_text()
        assert "SIGTERM 1" in log_text and "SIGTERM 2" not in log_text, log_text
