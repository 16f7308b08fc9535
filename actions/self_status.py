"""Every fleetdeck process with its state, for `fleetdeck status`: a dead one is a line, never a silence.

fleetdeck's own processes are the dashboard, the standalone collector and the managed nginx (master and
workers). Whether one *should* run comes from the last `fleet.up` event (what that `up` started), unless a later
`fleet.down` stopped the fleet. A process that should run and does not is a problem: `status` prints it and exits
non-zero (docs/operations.md says how to recover).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core.config import FleetConfig
from core.heartbeat import read_health
from core.process import pid_alive
from core.store import Store

RUNNING = "running"
STOPPED = "stopped"
DEAD = "dead"  # its pid file names a process that is gone: it was killed or crashed
ORPHANED = "orphaned"
# the collector writes its heartbeat every second; older than this, it has stopped working
HEARTBEAT_STALE_S = 10.0
LOOKBACK_S = 400 * 86400.0


def fleet_expected(store: Store) -> dict[str, Any] | None:
    """The details of the last `fleet.up` when no `fleet.down` came after it, else None (the fleet is down)."""
    now = time.time()
    try:
        events = store.events(now - LOOKBACK_S, now + 60, kind="fleet.up") + store.events(
            now - LOOKBACK_S, now + 60, kind="fleet.down")
    except Exception:  # an unreadable store: nothing can be said about expectations
        return None
    if not events:
        return None
    last = max(events, key=lambda e: (e.ts, e.id))
    return dict(last.details) if last.kind == "fleet.up" else None


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip()[:20])
    except (OSError, ValueError):
        return None


def background_entry(name: str, pid_file: Path, live_pid: int | None, expected: bool, how: str) -> dict[str, Any]:
    recorded = _pid_in(pid_file)
    if live_pid:
        return {"name": name, "pid": live_pid, "state": RUNNING, "expected": expected, "problem": False,
                "detail": ""}
    if recorded and not pid_alive(recorded):
        detail = f"pid {recorded} from {pid_file.name} is gone (killed or crashed); {how}"
        return {"name": name, "pid": recorded, "state": DEAD, "expected": expected, "problem": True,
                "detail": detail}
    detail = f"not running; {how}" if expected else ""
    return {"name": name, "pid": None, "state": STOPPED, "expected": expected, "problem": expected,
            "detail": detail}


def nginx_entries(process_state: dict[str, Any], expected: bool) -> list[dict[str, Any]]:
    masters = list(process_state.get("masters", []))
    orphans = list(process_state.get("orphaned_workers", []))
    workers = list(process_state.get("workers", []))
    entries: list[dict[str, Any]] = []
    if masters:
        entries.append({"name": "nginx master", "pid": masters[0], "state": RUNNING, "expected": expected,
                        "problem": False, "detail": f"{len(workers)} worker(s): {', '.join(map(str, workers))}"})
    else:
        entries.append({"name": "nginx master", "pid": None, "state": STOPPED, "expected": expected,
                        "problem": expected or bool(orphans),
                        "detail": "not running; `fleetdeck up` starts it" if expected or orphans else ""})
    for pid in orphans:
        entries.append({"name": "nginx worker", "pid": pid, "state": ORPHANED, "expected": False, "problem": True,
                        "detail": "its master is gone; it still serves the last configuration. `fleetdeck up`"
                                  " replaces it, `fleetdeck down` stops it"})
    return entries


def collector_heartbeat(config: FleetConfig, now: float | None = None) -> dict[str, Any] | None:
    """The collector's heartbeat with a verdict on it (see collectors/self_health.py)."""
    health = read_health(config.state_path)
    if health is None:
        return None
    now = time.time() if now is None else now
    age = now - float(health.get("ts") or 0)
    problems = []
    pid = health.get("pid")
    alive = isinstance(pid, int) and pid_alive(pid)
    if not alive:
        problems.append(f"its process (pid {pid}) is gone")
    elif age > HEARTBEAT_STALE_S:
        problems.append(f"no heartbeat for {age:.0f}s")
    if health.get("last_error"):
        problems.append(f"store writes failing: {health['last_error']}")
    if health.get("buffered"):
        problems.append(f"{health['buffered']} sample(s) buffered")
    if health.get("dropped_total"):
        problems.append(f"{health['dropped_total']} sample(s) dropped")
    return {**health, "age_s": age, "alive": alive, "problems": problems}
