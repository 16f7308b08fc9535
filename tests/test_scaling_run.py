"""The scaling test on a real fleet: 1→3 replicas through the actions layer, the same load at each step, E(n)
stored per step, the replica count restored — also when the run is cancelled midway (through testruns, the way
the dashboard runs it). The CLI gate is exercised on the same fleet."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions.auth import Principal
from actions.backends.base import LIVE_STATES
from actions.backends.local import LocalOrchestrator
from actions.proving import testruns
from actions.proving.scaling import ScalingOptions, latest_scaling_run, run_key, run_scaling
from core.config import FleetConfig
from core.store import Store
from tests.support import REPO_ROOT, free_port, free_port_block, unique_name
from tests.support_load import SAMPLE_APPS, action_fleet_config, running_fleet, written_config

TESTER = Principal("scaling-tester", "operator", "cli")


@pytest.fixture(scope="module", params=SAMPLE_APPS)
def fleet_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_dsn: str,
                redis_url: str) -> Iterator[tuple[FleetConfig, Path]]:
    base = tmp_path_factory.mktemp(f"scaling_{request.param}")
    data = action_fleet_config(str(base), pg_dsn, redis_url, unique_name("fdt"), free_port_block(10), free_port(),
                               app=request.param)
    data["store"] = {"url": f"sqlite:///{base}/store.db"}
    config, config_file = written_config(base, data)
    with running_fleet(config):
        yield config, config_file


@pytest.fixture(scope="module")
def config(fleet_setup: tuple[FleetConfig, Path]) -> FleetConfig:
    return fleet_setup[0]


def live_count(config: FleetConfig, store: Store) -> int:
    service = config.service("web")
    return sum(1 for r in LocalOrchestrator(config, store).list(service) if r.state in LIVE_STATES)


def test_scaling_run_measures_each_step_and_restores(config: FleetConfig) -> None:
    store = Store(config.store_url)
    assert live_count(config, store) == 3
    events: list[dict] = []
    report = run_scaling(config, store, TESTER, ScalingOptions(max_replicas=3, step_seconds=1.5, connections=8),
                         progress=events.append)
    assert report.state == "done", report.error
    assert [s["replicas"] for s in report.steps] == [1, 2, 3]
    for step in report.steps:
        assert step["throughput"] > 0 and step["requests"] > 0
        assert step["p95_ms"] is not None and 0 <= step["generator_cpu"] <= 2
        # the load really went through the LB to that many instances
        assert len(step["instances"]) == step["replicas"], step["instances"]
        if step["in_fit"]:
            assert step["efficiency"] == pytest.approx(step["throughput"] / (step["replicas"]
                                                                             * report.steps[0]["throughput"]))
    assert report.steps[0]["efficiency"] == pytest.approx(1.0)
    assert report.restored and live_count(config, store) == 3
    stored = store.get_kv(run_key(report.run_id))
    assert stored is not None and stored["state"] == "done" and len(stored["steps"]) == 3
    assert latest_scaling_run(store, "web")["run_id"] == report.run_id  # type: ignore[index]
    fact = store.facts(run_id=report.run_id, rule="linear_scaling")
    # the fact states what the steps measured: pass exactly when every usable step above 1 replica kept E(n) >= 0.8
    usable = [s["efficiency"] for s in report.steps if s.get("efficiency") is not None and s["replicas"] > 1]
    expected = ("pass" if min(usable) >= 0.8 else "fail") if usable else "unknown"
    assert len(fact) == 1 and fact[0].status == expected, (fact, report.steps)
    assert fact[0].evidence["steps"] == report.steps
    if report.fit:
        assert report.fit["sigma"] >= 0 and report.fit["kappa"] >= 0
    assert {e["phase"] for e in events} >= {"scaling", "load", "step_done", "restoring", "finished"}
    # the scaling went through the audited actions layer
    assert [a.params["replicas"] for a in store.audit(action="scale") if a.result == "ok"][:3] == [1, 2, 3]


def test_cancelled_run_restores_the_replica_count(config: FleetConfig) -> None:
    store = Store(config.store_url)
    run_id = testruns.start(config, store, TESTER, "scaling",
                            {"max_replicas": 3, "step_seconds": 20.0, "connections": 4})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc = testruns.get_run(store, run_id)
        if doc and doc["timeline"]:  # the first load step is running (at 1 replica)
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the scaling run never started its load: {testruns.get_run(store, run_id)}")
    assert live_count(config, store) == 1
    testruns.request_cancel(store, run_id, TESTER)
    assert testruns.wait(run_id, 60), "the cancelled run did not end"
    doc = testruns.get_run(store, run_id)
    assert doc is not None and doc["state"] == "cancelled", doc
    assert doc["result"]["restored"] is True, doc["result"]
    assert live_count(config, store) == 3
    assert doc in testruns.list_runs(store, kind="scaling")


def test_cli_gate_exit_codes(fleet_setup: tuple[FleetConfig, Path]) -> None:
    _, config_file = fleet_setup
    command = [str(Path(REPO_ROOT) / "fleetdeck"), "--config", str(config_file), "test"]
    ok = subprocess.run([*command, "readiness", "--rules", "bronze", "--json"], capture_output=True, text=True,
                        timeout=90)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["passed"] and {f["rule"] for f in doc["result"]["facts"]} == {
        "lb_health_checks", "stateless_sessions", "no_local_disk_uploads"}
    # a load test whose threshold cannot be met must fail the gate: p95 under 0.001 ms is impossible
    strict = subprocess.run([*command, "load", "--duration", "1", "--rate", "50", "--max-p95-ms", "0.001"],
                            capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "NOT PASSED" in strict.stdout
    relaxed = subprocess.run([*command, "load", "--duration", "1", "--rate", "50", "--json"], capture_output=True,
                             text=True, timeout=60)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert json.loads(relaxed.stdout)["result"]["requests"] >= 40
