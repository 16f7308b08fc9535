"""A standalone `fleetdeck collect` process for tests: started with a config file, stopped (or killed) by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

FLEETDECK = os.path.join(REPO_ROOT, "fleetdeck")


def write_collector_config(tmp_path: Path, extra: dict[str, Any], name: str = "fleet.yaml") -> Path:
    """A fleet whose only service never runs (no replicas): the collector watches what `extra` adds."""
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "run"),
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "collectors": {"instances_s": 1, "bullmq_s": 1, "redis_s": 1, "postgres_s": 1, "timeout_s": 2},
        **extra,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def start_collector(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen([FLEETDECK, "--config", str(config), "collect"], stdout=log, stderr=log,
                            start_new_session=True)


def stop_collector(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
    """Signal the collector by its PID and wait for it to exit; SIGKILL when SIGTERM is not enough."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as error:  # not ready yet (connection refused, table missing, ...): keep polling
            last = error
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")
