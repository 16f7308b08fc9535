"""fleetdeck's own nginx processes, found from /proc — including workers whose master was killed.

The pid file names only the master. When the master dies without a graceful shutdown (kill -9, OOM killer), its
workers are re-parented to PID 1 (or a subreaper), keep the listen socket and keep serving the last
configuration; nothing can reload or stop them through the master any more. fleetdeck recognises its processes by
what only they have:

- the master's title keeps its command line, which names our prefix (`-p <state_dir>/nginx/`) or our nginx.conf;
- a worker's title is only "nginx: worker process", so it counts as ours when it holds an open file under our
  prefix (the error log and the access log are opened by the master and inherited by every worker).

Nothing here signals a process by name: callers get pids that were identified one by one (see docs/operations.md).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import NamedTuple, TypedDict

from core.process import pid_alive, proc_cmdline, terminate, wait_gone

MASTER = "master"
WORKER = "worker"  # workers, cache manager/loader: every non-master nginx process
# A process holding more descriptors than this is not one of our nginx workers worth the scan cost.
MAX_FDS_SCANNED = 4096


class NginxProcess(NamedTuple):
    pid: int
    role: str  # master | worker
    ppid: int
    title: str


def _ppid_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _holds_file_under(pid: int, prefix: Path) -> bool:
    root = str(prefix).rstrip("/") + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in fds[:MAX_FDS_SCANNED]:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(root):
            return True
    return False


def is_own_master(title: str, prefix: Path, conf_path: Path) -> bool:
    root = str(prefix).rstrip("/")
    return title.startswith("nginx: master process") and (f"-p {root}/" in title or str(conf_path) in title)


def own_nginx_processes(prefix: Path, conf_path: Path) -> list[NginxProcess]:
    """Every live nginx process of ours (masters and workers), sorted by pid."""
    found: list[NginxProcess] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = proc_cmdline(pid)
        if not argv:
            continue
        title = " ".join(argv)[:500]
        if not title.startswith("nginx:") or not pid_alive(pid):
            continue
        ppid = _ppid_of(pid)
        if ppid is None:
            continue
        if is_own_master(title, prefix, conf_path):
            found.append(NginxProcess(pid, MASTER, ppid, title))
        elif not title.startswith("nginx: master process") and _holds_file_under(pid, prefix):
            found.append(NginxProcess(pid, WORKER, ppid, title))
    return sorted(found)


def orphaned_workers(processes: list[NginxProcess]) -> list[NginxProcess]:
    """Workers whose parent is not one of our live masters: their master was killed."""
    masters = {p.pid for p in processes if p.role == MASTER}
    return [p for p in processes if p.role == WORKER and p.ppid not in masters]


def stop_orphaned_workers(workers: list[NginxProcess], grace_s: float) -> dict[int, str]:
    """SIGQUIT each orphan (graceful: it closes its listener and finishes its requests), SIGKILL after `grace_s`.

    The pids come from `own_nginx_processes`, so each one was identified as ours just before.
    """
    outcome: dict[int, str] = {}
    for worker in workers:
        if pid_alive(worker.pid):
            try:
                os.kill(worker.pid, signal.SIGQUIT)
            except ProcessLookupError:
                outcome[worker.pid] = "gone"
    for worker in workers:
        if worker.pid in outcome:
            continue
        if wait_gone(worker.pid, grace_s):
            outcome[worker.pid] = "graceful"
        else:
            outcome[worker.pid] = terminate(worker.pid, 1.0, group=False, first_signal=signal.SIGKILL)
    return outcome


class ProcessState(TypedDict):
    state: str  # running | orphaned | stopped
    masters: list[int]
    workers: list[int]
    orphaned_workers: list[int]


def describe(processes: list[NginxProcess]) -> ProcessState:
    """The load balancer's real process state, as JSON-able data for `status` and the dashboard."""
    masters = [p.pid for p in processes if p.role == MASTER]
    orphans = [p.pid for p in orphaned_workers(processes)]
    workers = [p.pid for p in processes if p.role == WORKER and p.pid not in orphans]
    if masters and not orphans:
        state = "running"
    elif orphans:
        state = "orphaned"  # the master is gone (or a second one runs) and workers still hold the listen port
    else:
        state = "stopped"
    return ProcessState(state=state, masters=masters, workers=workers, orphaned_workers=orphans)
