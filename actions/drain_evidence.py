"""When is a drained server idle? Decided from what the load balancer shows, not from the app's own counter.

An app's in-flight counter is not trustworthy evidence: most Express apps count every request, including
fleetdeck's own health probe, so an idle replica reports 1 forever; other apps report no counter at all. The
nginx side does show it (docs/architecture.md, "How drain decides a replica is idle"):

1. **no old workers**: after the reload that marked the server down, workers of the older generation (titled
   "nginx: worker process is shutting down") are the only ones that may still send it a request; the new
   generation never picks a `down` server;
2. **no open upstream connection to the address**: no nginx process holds an established TCP connection to the
   replica (read from /proc/net/tcp{,6} and the nginx processes' socket inodes), so no request is on its way;
3. **no new request in the access log**: no line naming the address was logged since the previous poll.

All three must hold on consecutive polls. The app's counter is extra evidence: our own probe can explain at most one
request of it, so a count above 1 (work that did not come through nginx, e.g. a direct request) keeps the drain
waiting; a count of 1 is ambiguous (the probe itself, or one direct request) and does not. Only when no nginx
process is visible on this host (an external load balancer elsewhere) does the app's count decide alone.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# TCP states in /proc/net/tcp that can carry a request: ESTABLISHED and SYN_SENT.
_ACTIVE_TCP_STATES = frozenset({"01", "02"})
# At most this much of the access log is read per poll (a busy log is skimmed, never slurped).
ACCESS_LOG_READ_LIMIT = 1 << 20


def _hex_address(host: str, port: int) -> set[str]:
    """The forms /proc/net/tcp{,6} spell host:port in (little-endian words), IPv4 and IPv4-mapped IPv6."""
    forms: set[str] = set()
    port_hex = f"{port:04X}"
    try:
        packed = socket.inet_aton(host)
    except OSError:
        packed = b""
    if packed:
        forms.add(f"{packed[::-1].hex().upper()}:{port_hex}")
        mapped = b"\0" * 10 + b"\xff\xff" + packed
        words = [mapped[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4)]
        forms.add(f"{''.join(words)}:{port_hex}")
    else:
        try:
            packed6 = socket.inet_pton(socket.AF_INET6, host.strip("[]"))
        except OSError:
            return forms
        words = [packed6[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4)]
        forms.add(f"{''.join(words)}:{port_hex}")
    return forms


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_to(address: str, owners: list[int]) -> int:
    """Established (or connecting) TCP connections to `address` held by the processes `owners`."""
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        return 0
    remote = _hex_address(host or "127.0.0.1", port)
    inodes: set[str] = set()
    for pid in owners:
        inodes |= socket_inodes(pid)
    if not inodes or not remote:
        return 0
    # Each owner's own view of the TCP tables: an nginx in a container sees its network namespace, not ours.
    views: dict[str, int] = {}
    for pid in owners:
        try:
            views.setdefault(os.readlink(f"/proc/{pid}/ns/net"), pid)
        except OSError:
            continue
    count = 0
    tables = [f"/proc/{pid}/net/{name}" for pid in views.values() for name in ("tcp", "tcp6")]
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[2] in remote and fields[3] in _ACTIVE_TCP_STATES and fields[9] in inodes:
                count += 1
    return count


def _stat_of(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.find("(") + 1:text.rfind(")")]
    rest = text[text.rfind(")") + 1:].split()
    try:
        return name, int(rest[1])
    except (IndexError, ValueError):
        return None


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:512].replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def nginx_processes(master: int | None) -> tuple[list[int], list[int]]:
    """(all nginx processes to watch, the old-generation workers among them).

    With our managed nginx's master known: its workers. Otherwise (external mode) every process named nginx on
    this host — another fleet's nginx only counts when it holds a connection to the address, which is itself a
    reason to wait.
    """
    processes: list[int] = []
    old: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        info = _stat_of(pid)
        if info is None:
            continue
        name, parent = info
        if master is not None and parent != master:
            continue
        if master is None and name != "nginx":
            continue
        processes.append(pid)
        if "shutting down" in _title(pid):
            old.append(pid)
    return processes, old


@dataclass
class AccessLogWatch:
    """New lines of nginx's JSON access log since the last look, counted for one upstream address."""

    path: Path
    address: str
    offset: int = -1
    last_request_ts: float | None = None

    def new_requests(self) -> int:
        try:
            size = self.path.stat().st_size
        except OSError:
            return 0
        if self.offset < 0 or size < self.offset:  # first look, or the log was rotated
            self.offset = size
            return 0
        if size == self.offset:
            return 0
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(min(size - self.offset, ACCESS_LOG_READ_LIMIT))
        complete = chunk.rfind(b"\n") + 1  # a half-written last line is read next time
        self.offset += complete
        count = 0
        for line in chunk[:complete].splitlines():
            if self.address.encode() not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            attempts = [a.strip() for a in str(entry.get("ua", "")).split(",")]
            if self.address in attempts:
                count += 1
                stamp = entry.get("t")
                if isinstance(stamp, int | float):
                    self.last_request_ts = float(stamp)
        return count


@dataclass
class DrainEvidence:
    """One poll's evidence about whether the load balancer still sends anything to a server."""

    lb_visible: bool
    old_workers: int
    upstream_connections: int
    new_requests: int
    app_in_flight: int | None

    @property
    def lb_idle(self) -> bool:
        return self.old_workers == 0 and self.upstream_connections == 0 and self.new_requests == 0

    def idle(self) -> bool:
        if self.lb_visible:
            # The app's count as extra evidence: our own probe explains at most 1 (most Express apps count it),
            # so more than that is real work in progress — e.g. requests that reached the replica directly.
            return self.lb_idle and (self.app_in_flight or 0) <= 1
        # no nginx on this host to look at: the app's own count is all there is
        return (self.app_in_flight or 0) == 0

    def describe(self) -> str:
        app = "no app in-flight count" if self.app_in_flight is None else f"app in-flight {self.app_in_flight}"
        if not self.lb_visible:
            return f"load balancer not visible on this host; {app}"
        return (f"old nginx workers {self.old_workers}, open upstream connections {self.upstream_connections},"
                f" new requests {self.new_requests}; {app}")

    def as_dict(self) -> dict[str, Any]:
        return {"lb_visible": self.lb_visible, "old_workers": self.old_workers,
                "upstream_connections": self.upstream_connections, "new_requests": self.new_requests,
                "app_in_flight": self.app_in_flight}


@dataclass
class DrainWatch:
    """Gathers DrainEvidence for one drained address, poll after poll."""

    address: str
    balancer: Any
    master_pid: int | None
    external: bool
    access_log: AccessLogWatch | None = None
    seen: list[DrainEvidence] = field(default_factory=list)

    @classmethod
    def for_balancer(cls, balancer: Any, address: str) -> DrainWatch:
        """From the LoadBalancer in front of the service (ManagedNginx: its master, workers and access log; an
        external nginx: every nginx process on this host; None: nothing routes to it)."""
        external = bool(getattr(balancer, "external", False))
        master_of = getattr(balancer, "master_pid", None)
        master = master_of() if callable(master_of) and not external else None
        prefix = getattr(balancer, "prefix", None)
        log = None
        if not external and isinstance(prefix, Path):
            log = AccessLogWatch(prefix / "logs" / "access.json.log", address)
            log.new_requests()  # remember where the log ends now
        return cls(address, balancer, master if isinstance(master, int) else None, external, log)

    def poll(self, app_in_flight: int | None) -> DrainEvidence:
        processes: list[int]
        if self.balancer is None:
            processes, visible = [], True  # no load balancer routes to it
        elif self.external:
            processes, _ = nginx_processes(None)
            visible = bool(processes)
        elif self.master_pid is None:
            processes, visible = [], True  # our nginx is not running: nothing can send it requests
        else:
            processes, _ = nginx_processes(self.master_pid)
            visible = True
        counter = getattr(self.balancer, "old_generation_workers", None)
        evidence = DrainEvidence(
            lb_visible=visible,
            # the balancer's own count (an external nginx is not ours to inspect: its connections say it instead)
            old_workers=int(counter()) if callable(counter) else 0,
            upstream_connections=connections_to(self.address, processes) if processes else 0,
            new_requests=self.access_log.new_requests() if self.access_log else 0,
            app_in_flight=app_in_flight,
        )
        self.seen.append(evidence)
        del self.seen[:-5]
        return evidence
