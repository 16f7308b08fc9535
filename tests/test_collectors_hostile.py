"""Hostile or broken targets must not hurt the collector (docs/security.md, "Targets").

A real server process (tests/hostile_targets.py) serves ten hostile kinds and 50 healthy targets on loopback; the
real scheduler polls them all every second into a real SQLite store. Every hostile target must end ``up=0`` with
its reason within its timeout + 1 s, and every healthy target must keep its one-second cadence.
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
TARGET_TIMEOUT_S = 1.0
REASONS = {
    "gzip_bomb": "gzip body over 65536 bytes once decompressed",
    "deflate_bomb": "deflate body over 65536 bytes once decompressed",
    "endless_chunked": "chunked body over 65536 bytes",
    "trickle": "timeout",
    "huge_headers": "header or chunk line too long",
    "invalid_json": "health JSON does not parse",
    "non_utf8": "not UTF-8",
    "deep_nesting": "nested too deeply",
    "huge_metrics": "out of bounds",  # Content-Length over the 1 MiB /metrics cap
    "labels_10k": "over 16384 characters",
}


@pytest.fixture
def hostile_ports() -> Any:
    proc = subprocess.Popen([PYTHON, str(HOSTILE_SERVER), "50", "48"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the hostile target server did not start"
        yield json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_hostile_targets_end_down_with_their_reason_while_healthy_ones_keep_cadence(
    tmp_path: Path, hostile_ports: dict[str, Any]
) -> None:
    assert set(hostile_ports["hostile"]) == set(REASONS)

    def target(name: str, port: int) -> InstanceTarget:
        return InstanceTarget(name, "web", f"http://127.0.0.1:{port}", "/health", "/metrics", TARGET_TIMEOUT_S)

    targets = [target(f"hostile/{kind}", port) for kind, port in hostile_ports["hostile"].items()]
    targets += [target(f"healthy/h{i}", port) for i, port in enumerate(hostile_ports["healthy"])]
    config = parse_config(
        {"state_dir": str(tmp_path / "run"), "store": {"url": f"sqlite:///{tmp_path}/fd.db"},
         "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
         "collectors": {"instances_s": 1, "timeout_s": 2}},
        base_dir=tmp_path,
    )  # fmt: skip
    store = Store(config.store_url)
    written: list[Sample] = []
    real_write = store.write_samples

    def spy(samples: list[Sample]) -> int:  # the real store is written; the test also keeps what went in
        batch = list(samples)
        written.extend(batch)
        return real_write(batch)

    store.write_samples = spy  # type: ignore[method-assign]
    scheduler = CollectorScheduler(
        config, store, collectors=[InstanceCollector(fixed_targets=targets)], intervals={"instances": 1.0}
    )
    scheduler.start()
    started = time.time()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            ups = [s for s in written if s.metric == "up" and s.source == "instance"]
            healthy_counts = [sum(1 for s in ups if s.target == t.key) for t in targets if t.key.startswith("h")]
            hostile_seen = {s.target for s in ups if s.target.startswith("hostile/")}
            if min(healthy_counts) >= 6 and len(hostile_seen) == len(REASONS):
                break
    finally:
        scheduler.stop()
        store.close()
    ups = [s for s in written if s.metric == "up" and s.source == "instance"]
    latencies = {(s.target, s.ts): s.value for s in written if s.metric == "latency_ms"}
    for kind, reason in REASONS.items():
        mine = [s for s in ups if s.target == f"hostile/{kind}"]
        assert mine, f"{kind}: never reported"
        for sample in mine:
            assert sample.value == 0, f"{kind} reported up: {sample}"
            assert reason in (sample.text or ""), f"{kind}: {sample.text!r}"
            assert latencies[(sample.target, sample.ts)] <= (TARGET_TIMEOUT_S + 1.0) * 1000, kind
            assert len(sample.text or "") <= 500
    for t in targets:
        if not t.key.startswith("healthy/"):
            continue
        mine = sorted(s.ts for s in ups if s.target == t.key and s.value == 1)
        assert len(mine) >= 5, f"{t.key}: {len(mine)} polls in {time.time() - started:.1f}s"
        gaps = [b - a for a, b in itertools.pairwise(mine)]
        assert max(gaps) < 2.0, f"{t.key} missed its 1 s cadence: gaps {gaps}"
        assert all(s.value == 1 for s in ups if s.target == t.key)
    requests = [s for s in written if s.metric == "requests_total" and s.target.startswith("healthy/")]
    assert requests and all(s.value == 500 for s in requests)  # /metrics of healthy targets read in the same cycles
