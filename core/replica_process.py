"""Which OS processes belong to a replica, independent of what its command line looks like.

A replica may be started through any wrapper (`env PORT=9101 node app.js`, `sh -c ...`, `npm start`), so its
command line proves nothing: `env` execs node and drops its arguments, `npm start` shows `npm`, and right after a
spawn `/proc/<pid>/cmdline` can even read empty for a few milliseconds. fleetdeck therefore identifies a replica
by three things it controls itself (see docs/architecture.md, "Replica identity"):

- the **leader**: the pid fleetdeck spawned together with its start time (field 22 of `/proc/<pid>/stat`, in clock
  ticks since boot). A pid the kernel recycled for another program has another start time, so it never matches;
  the start time is fixed at fork and survives `exec`, so it is readable from the first instant.
- the **process group**: the leader runs in its own session, so its pgid is its pid and every child a wrapper
  forks (npm → sh → node) is in that group unless it detaches itself.
- an **environment marker** `FLEETDECK_REPLICA=<fleet key>/<service>/<instance id>/<token>` that every descendant
  inherits, read back from `/proc/<pid>/environ`. It finds children that left the group (daemonised) and the
  processes of replicas whose record was lost, so `fleetdeck down` can stop everything the fleet started.

Nothing here imports the action layer: these are plain functions over /proc and signals.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MARKER_VAR = "FLEETDECK_REPLICA"
# /proc/<pid>/environ of a big process can be large; the marker is searched in this much of it.
ENVIRON_READ_LIMIT = 1 << 20
_REF_PREFIX = "proc:"


def fleet_key(state_path: Path) -> str:
    """A short stable name for one fleet (its state directory): markers of two fleets never collide."""
    return hashlib.sha256(str(Path(state_path).resolve()).encode()).hexdigest()[:12]


def new_marker(key: str, service: str, instance_id: str) -> str:
    """The marker value for one spawn; the random token tells this spawn from an earlier one of the same id."""
    return f"{key}/{service}/{instance_id}/{secrets.token_hex(6)}"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), None when the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    return fields if len(fields) > 20 else None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (stat field 22); None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its exit status is left)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def environ_marker(pid: int) -> str | None:
    """The value of FLEETDECK_REPLICA in the process's environment, None when absent or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read(ENVIRON_READ_LIMIT)
    except OSError:
        return None
    needle = MARKER_VAR.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(needle):
            return entry[len(needle):][:512].decode(errors="replace")
    return None


def _all_pids() -> Iterable[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def marked_processes(prefix: str, exclude: Iterable[int] = ()) -> list[int]:
    """Running processes whose marker starts with `prefix` (a whole fleet, one replica, one spawn)."""
    skip = {os.getpid(), *exclude}
    found: list[int] = []
    for pid in _all_pids():
        if pid in skip:
            continue
        marker = environ_marker(pid)
        if marker is not None and marker.startswith(prefix) and is_running(pid):
            found.append(pid)
    return found


@dataclass(frozen=True)
class ReplicaProcess:
    """How a replica's processes are recognised: the leader pid, its start time and the environment marker."""

    pid: int
    start_ticks: int | None
    marker: str | None

    def encode(self) -> str:
        """The text kept in the replica record's `ref` column (at most 255 characters)."""
        return f"{_REF_PREFIX}{self.pid}:{self.start_ticks if self.start_ticks is not None else ''}:{self.marker or ''}"

    @classmethod
    def decode(cls, ref: str, pid: int | None) -> ReplicaProcess | None:
        """From a record's `ref`; None for records written before identities existed (ref was the bare pid)."""
        if not ref.startswith(_REF_PREFIX):
            return None
        pid_text, _, rest = ref[len(_REF_PREFIX):].partition(":")
        ticks_text, _, marker = rest.partition(":")
        try:
            leader = int(pid_text)
            ticks = int(ticks_text) if ticks_text else None
        except ValueError:
            return None
        if pid is not None and pid != leader:
            return None
        return cls(leader, ticks, marker or None)

    @classmethod
    def of_spawn(cls, pid: int, marker: str) -> ReplicaProcess:
        """Right after the spawn: the start time is already fixed (set at fork, kept across exec)."""
        return cls(pid, start_ticks(pid), marker)

    def leader_alive(self) -> bool:
        """The spawned process still runs (a recycled pid has another start time and does not count)."""
        if not is_running(self.pid):
            return False
        return self.start_ticks is None or start_ticks(self.pid) == self.start_ticks

    def members(self) -> list[int]:
        """Every running process of this spawn: the leader, its group, and anything carrying its marker."""
        pids: set[int] = set()
        if self.leader_alive():
            pids.add(self.pid)
            pids.update(p for p in _all_pids() if process_group(p) == self.pid and is_running(p))
        if self.marker:
            pids.update(marked_processes(self.marker))
        return sorted(pids)


@dataclass
class StopReport:
    """What stopping a replica's processes did: `outcome` gone | graceful | killed, and pids that survived."""

    outcome: str
    signalled: list[int]
    survivors: list[int]


def _signal_all(identity: ReplicaProcess, pids: list[int], sig: signal.Signals) -> None:
    """Every process exactly once: whole groups where a group is provably this replica's (the leader's own, or one
    with a marked member, whose number therefore cannot be recycled), then each pid no signalled group covers.

    Once matters: apps treat a second SIGTERM as "exit now" and would drop their in-flight work.
    """
    groups: set[int] = set()
    if identity.leader_alive():
        groups.add(identity.pid)
    members_group = {pid: process_group(pid) for pid in pids}
    for group in members_group.values():
        if group and group != os.getpgrp():
            groups.add(group)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for pid, group in members_group.items():
        if group not in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _reap(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _wait_all_gone(identity: ReplicaProcess, pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pids)
        left = [p for p in pids if is_running(p) and (p != identity.pid or identity.leader_alive())]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_processes(identity: ReplicaProcess, grace_s: float, first_signal: signal.Signals = signal.SIGTERM,
                   kill_wait_s: float = 5.0) -> StopReport:
    """SIGTERM every process of the replica (whole group + marked stragglers), wait `grace_s`, then SIGKILL."""
    pids = identity.members()
    if not pids:
        return StopReport("gone", [], [])
    _signal_all(identity, pids, first_signal)
    left = _wait_all_gone(identity, pids, grace_s)
    # children forked during the grace period (a wrapper restarting its child) are members too
    late = [p for p in identity.members() if p not in pids]
    if not left and not late:
        return StopReport("graceful", pids, [])
    everyone = sorted({*left, *late})
    _signal_all(identity, everyone, signal.SIGKILL)
    survivors = _wait_all_gone(identity, everyone, kill_wait_s)
    return StopReport("killed", sorted({*pids, *late}), survivors)
