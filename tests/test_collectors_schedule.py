"""The scheduler's own accounting and its slot jobs, against real loopback targets (tests/hostile_targets.py).

Slot jobs (many targets per APScheduler job) are what makes 10,000 targets affordable; here the threshold is
lowered so 12 targets share slot jobs. A trickling target whose run outlasts the interval must be skipped (not
stacked) and the skips must reach the store as ``cycles_skipped_total`` of ``scheduler/instances``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.instances import InstanceCollector, InstanceTarget
from collectors.scheduler import CollectorScheduler
from core.config import parse_config
from core.samples import Sample
from core.store import Store
from tests.support import PYTHON

HOSTILE_SERVER = Path(__file__).with_name("hostile_targets.py")


@pytest.fixture
def ports() -> Any:
    proc = subprocess.Popen([PYTHON, str(HOSTILE_SERVER), "12", "1"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_slot_jobs_keep_every_target_on_cadence_and_skips_are_reported(tmp_path: Path, ports: dict[str, Any]) -> None:
    targets = [
        InstanceTarget(f"web/h{i}", "web", f"http://127.0.0.1:{port}", "/health", "/metrics", 1.0)
        for i, port in enumerate(ports["healthy"])
    ]
    # a trickling target with a timeout longer than the interval: its next runs must be skipped, not stacked
    targets.append(
        InstanceTarget("web/slow", "web", f"http://127.0.0.1:{ports['hostile']['trickle']}", "/health", None, 2.5)
    )
    config = parse_config(
        {"state_dir": str(tmp_path / "run"), "store": {"url": f"sqlite:///{tmp_path}/fd.db"},
         "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
         "collectors": {"instances_s": 1, "timeout_s": 3}},
        base_dir=tmp_path,
    )  # fmt: skip
    store = Store(config.store_url)
    written: list[Sample] = []
    real_write = store.write_samples

    def spy(samples: list[Sample]) -> int:
        batch = list(samples)
        written.extend(batch)
        return real_write(batch)

    store.write_samples = spy  # type: ignore[method-assign]
    scheduler = CollectorScheduler(
        config, store, collectors=[InstanceCollector(fixed_targets=targets)], intervals={"instances": 1.0}
    )
    scheduler.slot_jobs_from = 5
    scheduler.start()
    try:
        jobs = [job.id for job in scheduler.scheduler.get_jobs() if not job.id.startswith("fleetdeck:")]
        assert jobs and all(":@slot" in job for job in jobs) and len(jobs) < len(targets)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            polls = [s for s in written if s.metric == "up" and s.target.startswith("web/h")]
            if min(sum(1 for s in polls if s.target == t.key) for t in targets[:-1]) >= 5:
                break
    finally:
        scheduler.stop()
        store.close()
    for target in targets[:-1]:
        times = sorted(s.ts for s in written if s.metric == "up" and s.target == target.key and s.value == 1)
        assert len(times) >= 5, target.key
        assert max(b - a for a, b in itertools.pairwise(times)) < 2.0, f"{target.key} lost its 1 s cadence"
    slow = [s for s in written if s.metric == "up" and s.target == "web/slow"]
    assert slow and all(s.value == 0 and "timeout" in (s.text or "") for s in slow)
    reported = {s.metric: s.value for s in written if s.source == "collector" and s.target == "scheduler/instances"}
    assert reported["cycles_skipped_total"] >= 1  # the slow target's overlapping runs
    assert reported["cycles_total"] >= 5 * (len(targets) - 1)
    assert scheduler.schedule_counts["instances"][1] == reported["cycles_skipped_total"]
