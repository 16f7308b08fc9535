"""Hostile targets benchmark (prints figures; not a test): the collector's memory and cadence under abuse.

The hostile-target server of the tests (tests/hostile_targets.py: gzip and deflate bombs, endless chunked,
trickle, huge headers, invalid JSON, non-UTF-8, deep nesting, an 8 MiB /metrics, 10,000 labels) serves beside 50
healthy targets. The real scheduler polls them every second in this process:
1. baseline, same run: the 50 healthy targets alone for ``--seconds``;
2. the 50 healthy targets plus every hostile one for ``--seconds``.
Prints this process's peak RSS after each phase (goal: under 150 MB with the hostile targets), the ratio of the
two, each hostile target's outcome (up=0 and its reason, worst latency against its 1 s timeout + 1 s) and the
healthy targets' worst gap between polls (cadence 1 s).

Run: PYTHONPATH=. .venv/bin/python bench/bench_hostile.py [--seconds 8] [--bomb-mib 48]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopback_targets import peak_rss_mb

from collectors.instances import InstanceCollector, InstanceTarget
from collectors.scheduler import CollectorScheduler
from core.config import parse_config
from core.samples import Sample
from core.store import Store

HOSTILE_SERVER = Path(__file__).resolve().parent.parent / "tests" / "hostile_targets.py"
TIMEOUT_S = 1.0


def _poll(targets: list[InstanceTarget], seconds: float, tmp: str) -> list[Sample]:
    config = parse_config(
        {"state_dir": f"{tmp}/run", "store": {"url": f"sqlite:///{tmp}/fd-{len(targets)}.db"},
         "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
         "collectors": {"instances_s": 1, "timeout_s": 2}},
        base_dir=Path(tmp),
    )  # fmt: skip
    store = Store(config.store_url)
    written: list[Sample] = []
    real_write = store.write_samples

    def keep(samples: list[Sample]) -> int:
        batch = [s for s in samples if s.metric in ("up", "latency_ms")]
        written.extend(batch)
        return real_write(samples)

    store.write_samples = keep  # type: ignore[method-assign]
    scheduler = CollectorScheduler(config, store, collectors=[InstanceCollector(fixed_targets=targets)],
                                   intervals={"instances": 1.0})  # fmt: skip
    scheduler.start()
    try:
        time.sleep(seconds)
    finally:
        scheduler.stop()
        store.close()
    return written


def _worst_gap(samples: list[Sample], healthy: list[str]) -> float:
    worst = 0.0
    for key in healthy:
        times = sorted(s.ts for s in samples if s.target == key and s.metric == "up" and s.value == 1)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        worst = max([worst, *gaps]) if gaps else float("inf")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bomb-mib", type=int, default=48, help="bombs' decompressed size (<= ~60)")
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, str(HOSTILE_SERVER), "50", str(args.bomb_mib)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        healthy = [
            InstanceTarget(f"healthy/h{i}", "web", f"http://127.0.0.1:{p}", "/health", "/metrics", TIMEOUT_S)
            for i, p in enumerate(ports["healthy"])
        ]
        hostile = [
            InstanceTarget(f"hostile/{kind}", "web", f"http://127.0.0.1:{p}", "/health", "/metrics", TIMEOUT_S)
            for kind, p in ports["hostile"].items()
        ]
        with tempfile.TemporaryDirectory(prefix="fleetdeck-bench-hostile-") as tmp:
            baseline = _poll(healthy, args.seconds, tmp)
            baseline_peak = peak_rss_mb()
            attacked = _poll(healthy + hostile, args.seconds, tmp)
            attacked_peak = peak_rss_mb()
    finally:
        proc.terminate()
        proc.wait(10)
    healthy_keys = [t.key for t in healthy]
    print(f"hostile targets: 50 healthy + {len(hostile)} hostile, 1 s interval, {args.seconds:g}s per phase")
    print(f"  peak RSS, healthy only (baseline)  {baseline_peak:6.1f} MB")
    print(f"  peak RSS, with the hostile targets {attacked_peak:6.1f} MB  (goal < 150 MB)"
          f"  {'MET' if attacked_peak < 150 else 'MISSED'}   ratio {attacked_peak / baseline_peak:.2f}x")  # fmt: skip
    gap_base, gap_attacked = _worst_gap(baseline, healthy_keys), _worst_gap(attacked, healthy_keys)
    print(f"  healthy targets' worst gap between polls: {gap_base:.2f}s alone, {gap_attacked:.2f}s under attack"
          f"  {'MET' if gap_attacked < 2.0 else 'MISSED'} (cadence 1 s, < 2 s)")  # fmt: skip
    latency = {(s.target, s.ts): s.value for s in attacked if s.metric == "latency_ms"}
    for target in hostile:
        ups = [s for s in attacked if s.target == target.key and s.metric == "up"]
        down = all(s.value == 0 for s in ups) and bool(ups)
        worst = max((latency.get((s.target, s.ts), 0.0) for s in ups), default=float("nan"))
        reason = (ups[-1].text or "")[:90] if ups else "never reported"
        ok = down and worst <= (TIMEOUT_S + 1) * 1000
        print(f"  {target.key[8:]:16} {'up=0' if down else 'UP!'} worst {worst:6.0f} ms {'MET' if ok else 'MISSED'}"
              f"  {reason}")  # fmt: skip


if __name__ == "__main__":
    main()
