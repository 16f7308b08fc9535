"""`fleetdeck autoscale simulate`: stored series replayed through a policy, on a real store, via the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path

import yaml

from core.samples import Sample
from core.store import Store
from tests.support_collector import FLEETDECK

STEP_S = 15


def test_simulate_replays_flapping_load_without_oscillation_then_scales_down(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({
        "services": [{"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010},
                      "replicas": 2, "max_replicas": 8}],
        "load_balancer": {"service": "web", "listen": "127.0.0.1:18080"},
        "store": {"url": f"sqlite:///{tmp_path}/fd.db"},
        "autoscale": {"web": {"mode": "advise", "rps_per_replica": 25, "interval": "15s",
                              "scale_down_window": "5m"}},
    }))
    store = Store(f"sqlite:///{tmp_path}/fd.db")
    now = time.time()
    start = now - 2 * 3600
    samples = []
    for index in range(int(2 * 3600 // STEP_S)):
        ts = start + index * STEP_S
        flapping = ts < start + 90 * 60
        rps = (200.0 if int((ts - start) // 60) % 2 == 0 else 20.0) if flapping else 20.0
        for instance in ("web-1", "web-2"):  # two replicas actually ran all along
            samples.append(Sample("instance", f"web/{instance}", "up", 1, ts, "bool"))
            samples.append(Sample("nginx", f"nginx:web/127.0.0.1:2000{instance[-1]}", "requests_per_s", rps / 2, ts,
                                  "1/s"))
    store.write_samples(samples)
    store.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FLEETDECK, "--config", str(path), "autoscale", "simulate", "web", "--last", "2h",
                               *args], capture_output=True, text=True, timeout=120, check=False)

    result = run("--json")
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    counts = [s["simulated"] for s in steps]
    flapping_end = next(i for i, s in enumerate(steps) if s["ts"] >= start + 90 * 60)
    during = counts[:flapping_end]
    assert all(b >= a for a, b in itertools.pairwise(during)), during  # flapping: up only, never back and forth
    assert max(during) == 8 and sum(1 for a, b in itertools.pairwise(during) if a != b) <= 2
    after = counts[flapping_end:]
    assert all(b <= a for a, b in itertools.pairwise(after)) and after[-1] == 1
    first_down = next(s for s in steps[flapping_end:] if s["change"] < 0)
    last_peak_ts = start + 88 * 60 + 45  # the last busy sample: minute 88 was the last even minute of flapping
    assert first_down["ts"] - last_peak_ts >= 5 * 60 - STEP_S  # the 5-minute window, give or take one step
    assert {s["actual"] for s in steps[1:-1]} == {2}
    text = run("--set", "rps_per_replica=50")
    assert text.returncode == 0, text.stderr
    assert "simulated" in text.stdout and "max 4" in text.stdout  # 200 / 50 with the override
    bad = run("--set", "rps_per_replica=-1")
    assert bad.returncode == 2 and "rps_per_replica" in bad.stderr
