"""Process, pid, port and HTTP-probe helpers shared by the local backend, nginx and `fleetdeck up/down`.

Plain standard library on purpose: nothing here knows about replicas or the store. A pid counts as ours only
when its /proc cmdline still names what we started (`process_matches`), because the kernel recycles pids.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from pathlib import Path

from core.config import REPO_ROOT
from core.http_probe import http_get as bounded_http_get

log = logging.getLogger(__name__)

# The project's interpreter: replicas run with the venv's packages even when fleetdeck runs from elsewhere.
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


class ProcessControlError(Exception):
    """A process could not be signalled, or survived SIGKILL; the actions layer re-raises it as its own error."""



def proc_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, None when it is gone. A zombie has an empty cmdline and counts as gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    _reap(pid)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError, OSError):
        return False
    return state not in ("Z", "X")


def process_matches(pid: int | None, *needles: str) -> bool:
    """True when `pid` is alive and every needle occurs in its command line (guards against recycled pids)."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    argv = proc_cmdline(pid)
    if argv is None:
        return False
    joined = " ".join(argv)
    return all(needle in joined for needle in needles)


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def terminate(pid: int, grace_s: float, group: bool = True, first_signal: signal.Signals = signal.SIGTERM) -> str:
    """Send `first_signal` (to the process group when `group`), wait `grace_s`, then SIGKILL.

    Returns "gone" (already dead), "graceful" or "killed". The caller must have checked the pid's identity.
    """
    if not pid_alive(pid):
        return "gone"

    def send(sig: signal.Signals) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            raise ProcessControlError(f"not allowed to signal pid {pid}: {error}") from None

    send(first_signal)
    if wait_gone(pid, grace_s):
        return "graceful"
    log.warning("pid %s ignored %s for %.1fs; sending SIGKILL", pid, first_signal.name, grace_s)
    send(signal.SIGKILL)
    if not wait_gone(pid, 5.0):
        raise ProcessControlError(f"pid {pid} survived SIGKILL")
    return "killed"


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens on host:port. SO_REUSEADDR like real servers, so TIME_WAIT leftovers don't count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def http_get(url: str, timeout_s: float) -> tuple[int, bytes]:
    """(status, body); status 0 means no usable HTTP answer (refused, timeout, body over the cap).

    Bounded in total time and size (core/http_probe.py): a trickling or huge health body cannot hold an action.
    """
    return bounded_http_get(url, timeout_s)
