"""nginx: stub_status totals, and per upstream server from the JSON access log (or the NGINX Plus API).

Open-source nginx has no per-upstream status API (docs/design-notes.md#nginx), so per-server traffic comes from the
access log in the ``fleet`` JSON format (fields ``ua`` = $upstream_addr, ``us`` = $upstream_status, ``urt`` =
$upstream_response_time, ``s`` = $status). The log is tailed from the last offset each tick: a rotation
(the path's inode changed) is handled by draining the old file descriptor to EOF first, and for one more tick
because workers reopen asynchronously after ``nginx -s reopen``; a truncation restarts at 0; a partial last line
waits for the next tick. ``server_state`` comes from ``<state_dir>/nginx/upstream.json`` written by
actions/backends/nginx.py. When ``plus_api_url`` is set the NGINX Plus ``/api/9/http/upstreams`` peers are used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NamedTuple

from collectors.base import LATENCY, UP, CollectorBase, MetricRegistry, MetricSpec, rate
from collectors.clients import CollectorClients
from core.config import FleetConfig
from core.nginx_procs import describe, own_nginx_processes
from core.samples import Sample

SOURCE = "nginx"
MAX_READ_PER_TICK = 64 * 1024 * 1024  # a log burst larger than this is read over several ticks

REGISTRY = MetricRegistry(
    SOURCE,
    [
        UP,
        LATENCY,
        MetricSpec("active", "count", "stub_status active connections"),
        MetricSpec("accepts", "count", "stub_status accepted connections (monotonic)"),
        MetricSpec("handled", "count", "stub_status handled connections (monotonic)"),
        MetricSpec("requests_total", "count", "stub_status requests (monotonic)"),
        MetricSpec("requests_per_s", "1/s", "requests per second (totals: stub_status; per server: access log)"),
        MetricSpec("reading", "count", "stub_status connections reading the request"),
        MetricSpec("writing", "count", "stub_status connections writing the response"),
        MetricSpec("waiting", "count", "stub_status idle keep-alive connections"),
        MetricSpec("requests", "count", "requests served by this server since the previous tick"),
        MetricSpec("status_4xx_per_s", "1/s", "4xx answers of this server per second"),
        MetricSpec("status_5xx_per_s", "1/s", "5xx answers of this server per second"),
        MetricSpec("upstream_p50_ms", "ms", "median $upstream_response_time of this server's served attempts"),
        MetricSpec("upstream_p95_ms", "ms", "95th percentile $upstream_response_time"),
        MetricSpec("failed_attempts", "count", "attempts on this server that nginx retried elsewhere, this tick"),
        MetricSpec("server_state", "", "0 up, 1 draining, 2 down (text = word)"),
        MetricSpec("process_state", "", "managed nginx: 0 running, 1 orphaned (master gone, workers serving),"
                   " 2 stopped (text = description)"),
    ],
)

STATE_CODES = {"up": 0, "draining": 1, "down": 2}
# NGINX Plus peer states onto ours: anything not serving is down
PLUS_STATES = {
    "up": "up",
    "draining": "draining",
    "down": "down",
    "unavail": "down",
    "checking": "down",
    "unhealthy": "down",
}

_STUB = re.compile(
    r"Active connections:\s*(\d+).*?(\d+)\s+(\d+)\s+(\d+)\s+Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)",
    re.S,
)


class StubStatus(NamedTuple):
    active: int
    accepts: int
    handled: int
    requests: int
    reading: int
    writing: int
    waiting: int


def parse_stub_status(text: str) -> StubStatus:
    match = _STUB.search(text)
    if match is None:
        raise ValueError(f"not a stub_status page: {text[:80]!r}")
    return StubStatus(*(int(group) for group in match.groups()))


class LogTailer:
    """Reads complete lines appended to a file since the last call, across rotation and truncation."""

    def __init__(self, path: str | os.PathLike[str], from_start: bool = False) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self._file: IO[bytes] | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._rotated: list[IO[bytes]] = []  # old files still drained for one more tick after a rotation
        self._opened_once = False  # the first open starts at the end (history is not "this tick")

    def _open(self, at_end: bool) -> None:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open across ticks on purpose
        except FileNotFoundError:
            self._file, self._inode = None, None
            return
        stat = os.fstat(handle.fileno())
        if at_end:
            handle.seek(0, os.SEEK_END)
        self._file, self._inode = handle, (stat.st_dev, stat.st_ino)

    def read_lines(self) -> list[bytes]:
        chunks: list[bytes] = []
        budget = MAX_READ_PER_TICK
        # the previous generation first, so lines come out in order
        still_rotated: list[IO[bytes]] = []
        for old in self._rotated:
            data = old.read(budget)
            budget -= len(data)
            chunks.append(data)
            if data:
                still_rotated.append(old)  # it may still be written to: look once more next tick
            else:
                old.close()
        self._rotated = still_rotated
        if self._file is None:
            # a file appearing later (created after we started) is read from its beginning
            self._open(at_end=not self._opened_once and not self.from_start)
            self._opened_once = True
        else:
            try:
                stat = os.stat(self.path)
                current = (stat.st_dev, stat.st_ino)
            except FileNotFoundError:
                current = None
            position = self._file.tell()
            if current != self._inode:
                data = self._file.read(budget)  # the rest of the old file
                budget -= len(data)
                chunks.append(data)
                self._rotated.append(self._file)
                self._open(at_end=False)  # a new file: everything in it is new
            elif stat.st_size < position:
                self._file.seek(0)  # truncated (copytruncate): start again
                self._partial = b""
        if self._file is not None:
            chunks.append(self._file.read(max(0, budget)))
        data = self._partial + b"".join(chunks)
        if not data:
            return []
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next tick
        return [line for line in lines if line]

    def close(self) -> None:
        for handle in [*self._rotated, *([self._file] if self._file else [])]:
            handle.close()
        self._rotated, self._file = [], None


class ServerStats:
    __slots__ = ("failed_attempts", "requests", "status_4xx", "status_5xx", "times_ms")

    def __init__(self) -> None:
        self.requests = 0
        self.status_4xx = 0
        self.status_5xx = 0
        self.failed_attempts = 0
        self.times_ms: list[float] = []


def _split(value: object) -> list[str]:
    """$upstream_* lists: attempts separated by ", ", internal redirects by " : "."""
    if value is None:
        return []
    return [part.strip() for part in str(value).replace(" : ", ", ").split(",") if part.strip()]


def aggregate_log_lines(lines: Iterable[bytes]) -> tuple[dict[str, ServerStats], int]:
    """Per upstream server stats from fleet-format JSON lines; returns (stats, unparseable line count)."""
    stats: dict[str, ServerStats] = {}
    bad = 0
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(entry, dict):
            bad += 1
            continue
        addresses = _split(entry.get("ua"))
        if not addresses or addresses[-1] == "-":
            continue  # served by nginx itself (static, return, limit_req 503)
        statuses = _split(entry.get("us"))
        times = _split(entry.get("urt"))
        for failed in addresses[:-1]:
            if ":" in failed:
                stats.setdefault(failed, ServerStats()).failed_attempts += 1
        served = addresses[-1]
        if ":" not in served:
            continue  # the upstream group name: no server could be picked (502)
        server = stats.setdefault(served, ServerStats())
        server.requests += 1
        status_word = statuses[-1] if statuses and statuses[-1] != "-" else str(entry.get("s", ""))
        if status_word.startswith("4"):
            server.status_4xx += 1
        elif status_word.startswith("5"):
            server.status_5xx += 1
        if times and times[-1] != "-":
            with contextlib.suppress(ValueError):  # a garbled time loses the time, not the request
                server.times_ms.append(float(times[-1]) * 1000.0)
    return stats, bad


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def read_upstream_states(path: Path) -> dict[str, str]:
    """address -> up|draining|down from actions/backends/nginx.py's upstream.json; empty when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    servers = data.get("servers", []) if isinstance(data, dict) else []
    return {str(s["address"]): str(s.get("state", "up")) for s in servers if isinstance(s, dict) and "address" in s}


class NginxTarget(NamedTuple):
    key: str  # "nginx:<lb>"
    stub_status_url: str | None
    access_log: str | None
    upstream_json: str | None
    plus_api_url: str | None
    timeout_s: float
    managed_prefix: str | None = None  # the managed nginx's prefix: its processes are checked in /proc


def targets_from_config(config: FleetConfig) -> list[NginxTarget]:
    lb = config.load_balancer
    if lb is None:
        return []
    nginx_dir = config.state_path / "nginx"
    access_log = lb.access_log or (str(nginx_dir / "logs" / "access.json.log") if lb.mode == "managed" else None)
    return [
        NginxTarget(
            f"nginx:{lb.service}",
            lb.stub_status_url,
            str(config.resolve(access_log)) if access_log else None,
            str(nginx_dir / "upstream.json"),
            lb.plus_api_url,
            config.collectors.timeout_s,
            str(nginx_dir) if lb.mode == "managed" else None,
        )
    ]


PROCESS_STATE_CODES = {"running": 0, "orphaned": 1, "stopped": 2}


def process_state_sample(key: str, prefix: str, ts: float) -> Sample:
    """The managed nginx's real process state: stub_status alone answers just as well from orphaned workers."""
    root = Path(prefix)
    state = describe(own_nginx_processes(root, root / "nginx.conf"))
    word = str(state["state"])
    if word == "orphaned":
        text = (f"orphaned: master gone, worker(s) {', '.join(map(str, state['orphaned_workers']))} still serving"
                " the last configuration; `fleetdeck up` replaces them")
    elif word == "running":
        text = f"running: master {state['masters'][0]}"
    else:
        text = "stopped"
    return REGISTRY.sample(key, "process_state", PROCESS_STATE_CODES[word], ts, text=text)


def plus_upstreams_url(base: str) -> str:
    """Accept the API root (`http://h/api`), a versioned root (`.../api/9`) or the full upstreams URL."""
    base = base.rstrip("/")
    if base.endswith("/http/upstreams"):
        return base
    if re.search(r"/api/\d+$", base):
        return base + "/http/upstreams"
    return base + "/9/http/upstreams"


class NginxCollector(CollectorBase[NginxTarget]):
    name = "nginx"
    source = SOURCE
    registry = REGISTRY

    def __init__(self, config: FleetConfig | None = None, fixed_targets: list[NginxTarget] | None = None,
                 clients: CollectorClients | None = None) -> None:
        super().__init__(config, clients, fixed_targets)
        self._tailers: dict[str, LogTailer] = {}
        self._previous: dict[tuple[str, str], tuple[float, float]] = {}
        self._last_tick: dict[str, float] = {}

    def targets(self) -> list[NginxTarget]:
        if self.fixed_targets is not None:
            return list(self.fixed_targets)
        return targets_from_config(self.config) if self.config else []

    async def _get(self, url: str, timeout_s: float) -> tuple[int, str]:
        # the shared bounded client (collectors/clients.py): a runaway status page cannot eat the collector's memory
        response = await self.clients.http().get(url, timeout_s)
        return response.status, response.text()

    def _rate(self, key: str, metric: str, value: float, ts: float) -> float | None:
        state = (key, metric)
        per_s = rate(self._previous.get(state), value, ts)
        self._previous[state] = (value, ts)
        return per_s

    async def collect(self, target: NginxTarget) -> list[Sample]:
        key = target.key
        sample = REGISTRY.sample
        ts = time.time()
        started = time.perf_counter()
        totals: list[Sample] = []
        if target.stub_status_url:
            status, text = await self._get(target.stub_status_url, target.timeout_s)
            if status != 200:
                raise RuntimeError(f"stub_status answered HTTP {status}")
            stub = parse_stub_status(text)
            totals += [
                sample(key, "active", stub.active, ts),
                sample(key, "accepts", stub.accepts, ts),
                sample(key, "handled", stub.handled, ts),
                sample(key, "requests_total", stub.requests, ts),
                sample(key, "reading", stub.reading, ts),
                sample(key, "writing", stub.writing, ts),
                sample(key, "waiting", stub.waiting, ts),
            ]
            per_s = self._rate(key, "requests_total", stub.requests, ts)
            if per_s is not None:
                totals.append(sample(key, "requests_per_s", per_s, ts))
        if target.plus_api_url:
            per_server = await self._plus(target, ts)
        else:
            per_server = await self._from_log(target, ts)
        latency_ms = (time.perf_counter() - started) * 1000.0
        process = []
        if target.managed_prefix:  # a /proc scan (tens of ms on a busy host): off the shared event loop
            process = [await asyncio.to_thread(process_state_sample, key, target.managed_prefix, ts)]
        return [sample(key, "up", 1, ts), sample(key, "latency_ms", latency_ms, ts), *totals, *process, *per_server]

    async def _from_log(self, target: NginxTarget, ts: float) -> list[Sample]:
        states = read_upstream_states(Path(target.upstream_json)) if target.upstream_json else {}
        out: list[Sample] = []
        stats: dict[str, ServerStats] = {}
        previous_tick = self._last_tick.get(target.key)
        self._last_tick[target.key] = ts
        if target.access_log:
            tailer = self._tailers.get(target.key)
            if tailer is None or str(tailer.path) != target.access_log:
                tailer = self._tailers[target.key] = LogTailer(target.access_log)
            lines = await asyncio.to_thread(tailer.read_lines)
            stats, _bad = aggregate_log_lines(lines)
        elapsed = ts - previous_tick if previous_tick is not None else None
        sample = REGISTRY.sample
        for address in sorted(set(stats) | set(states)):
            server_key = f"{target.key}/{address}"
            if address in states:
                word = states[address] if states[address] in STATE_CODES else "down"
                out.append(sample(server_key, "server_state", STATE_CODES[word], ts, text=word))
            if elapsed is None or elapsed <= 0:
                continue  # the first tick only positions the tail at the end of the log
            server = stats.get(address, ServerStats())
            out += [
                sample(server_key, "requests", server.requests, ts),
                sample(server_key, "requests_per_s", server.requests / elapsed, ts),
                sample(server_key, "status_4xx_per_s", server.status_4xx / elapsed, ts),
                sample(server_key, "status_5xx_per_s", server.status_5xx / elapsed, ts),
                sample(server_key, "failed_attempts", server.failed_attempts, ts),
            ]
            if server.times_ms:
                out.append(sample(server_key, "upstream_p50_ms", percentile(server.times_ms, 0.50), ts))
                out.append(sample(server_key, "upstream_p95_ms", percentile(server.times_ms, 0.95), ts))
        return out

    async def _plus(self, target: NginxTarget, ts: float) -> list[Sample]:
        assert target.plus_api_url is not None
        status, text = await self._get(plus_upstreams_url(target.plus_api_url), target.timeout_s)
        if status != 200:
            raise RuntimeError(f"NGINX Plus API answered HTTP {status}")
        return self.plus_samples(target.key, json.loads(text), ts)

    def plus_samples(self, key: str, upstreams: dict[str, Any], ts: float) -> list[Sample]:
        """Per peer samples from `/api/9/http/upstreams`; counters become rates between ticks."""
        sample = REGISTRY.sample
        out: list[Sample] = []
        for group in upstreams.values():
            for peer in group.get("peers", []) if isinstance(group, dict) else []:
                server_key = f"{key}/{peer.get('server')}"
                word = PLUS_STATES.get(str(peer.get("state", "")), "down")
                out.append(sample(server_key, "server_state", STATE_CODES[word], ts, text=str(peer.get("state"))))
                responses = peer.get("responses", {})
                for metric, value in (
                    ("requests_per_s", peer.get("requests")),
                    ("status_4xx_per_s", responses.get("4xx")),
                    ("status_5xx_per_s", responses.get("5xx")),
                ):
                    if value is None:
                        continue
                    per_s = self._rate(server_key, metric, float(value), ts)
                    if per_s is not None:
                        out.append(sample(server_key, metric, per_s, ts))
                fails = peer.get("fails")
                if fails is not None:
                    previous = self._previous.get((server_key, "fails"))
                    self._previous[(server_key, "fails")] = (float(fails), ts)
                    if previous is not None and fails >= previous[0]:
                        out.append(sample(server_key, "failed_attempts", float(fails) - previous[0], ts))
        return out

    async def release(self) -> None:
        for tailer in self._tailers.values():
            tailer.close()
        self._tailers.clear()
