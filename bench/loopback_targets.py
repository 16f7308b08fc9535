"""Loopback targets and a Prometheus run against them, shared by the collector benchmarks (no figures here).

- :func:`start_targets` starts server processes (uvloop when installed) listening on N loopback ports, each
  answering ``/health`` with Express-like JSON and ``/metrics`` with a real prom-client 15 page
  (tests/data/promclient-15.1.3-default.txt: default metrics, a labelled request histogram and counter; ~225 lines).
- :func:`measure_prometheus` runs the Debian ``prometheus`` binary against the same targets: a generated
  prometheus.yml (loopback only, listen address 127.0.0.1), first with no scrape targets (its fixed runtime cost),
  then reloaded (SIGHUP) with every target; its CPU is read from /proc/<pid>/stat and its scrape count from its
  own ``prometheus_target_interval_length_seconds_count``. It is stopped by its PID and its temp dir removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
METRICS_PAGE = REPO / "tests" / "data" / "promclient-15.1.3-default.txt"
PROMETHEUS_BASELINE = Path(__file__).resolve().parent / "prometheus_baseline.json"
HEALTH_BODY = json.dumps(
    {
        "status": "ok",
        "uptime": 1234.5,
        "version": "1.0.0",
        "memory": {"rss": 81_000_000, "heapTotal": 40_000_000, "heapUsed": 30_000_000, "external": 2_000_000},
        "database": {"pool": {"totalCount": 10, "idleCount": 8, "waitingCount": 0}},
    }
)
PORTS_PER_SERVER = 4000  # one listening socket + one kept connection per port, well inside a 20,000 fd limit

SERVER = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
count, body, metrics = int(sys.argv[1]), sys.argv[2].encode(), open(sys.argv[3], "rb").read()
def answer(ctype, payload):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nConnection: keep-alive\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
health = answer(b"application/json; charset=utf-8", body)
page = answer(b"text/plain; version=0.0.4; charset=utf-8", metrics)
class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(page if head.startswith(b"GET /metrics") else health)
async def main():
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        server = await loop.create_server(Proto, "127.0.0.1", 0, backlog=128)
        ports.append(server.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Targets(NamedTuple):
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_targets(count: int) -> Targets:
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        remaining = count
        while remaining > 0:
            chunk = min(PORTS_PER_SERVER, remaining)
            proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(chunk), HEALTH_BODY, str(METRICS_PAGE)], stdout=subprocess.PIPE
            )
            procs.append(proc)
            assert proc.stdout is not None
            ports.extend(int(p) for p in proc.stdout.readline().split())
            remaining -= chunk
    except BaseException:
        Targets(ports, procs).stop()
        raise
    return Targets(ports, procs)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PrometheusFigures(NamedTuple):
    version: str
    scrapes: int
    cpu_per_scrape_us: float  # the process's whole CPU over the window / scrapes in it
    marginal_per_scrape_us: float  # minus its idle (no targets) CPU over an equal window
    interval_s: float
    window_s: float


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("prometheus_target_interval_length_seconds_count")
        )
    )


def _config(ports: list[int], interval_s: float) -> str:
    if not ports:
        return f"global:\n  scrape_interval: {interval_s:g}s\nscrape_configs: []\n"
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return (
        f"global:\n  scrape_interval: {interval_s:g}s\n  scrape_timeout: {min(interval_s, 4):g}s\n"
        f"scrape_configs:\n  - job_name: bench\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )


def measure_prometheus(ports: list[int], interval_s: float = 5.0, window_s: float = 20.0) -> PrometheusFigures | None:
    """Prometheus's CPU per scrape of these targets, or None when the binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    version_text = (version.stdout or version.stderr).splitlines()[0] if (version.stdout or version.stderr) else "?"
    workdir = Path(tempfile.mkdtemp(prefix="fleetdeck-bench-prom-"))
    config = workdir / "prometheus.yml"
    config.write_text(_config([], interval_s))
    web_port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _scrape_count(web_port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("prometheus did not start") from None
                time.sleep(0.3)
        time.sleep(3)  # start-up work (WAL, head block) out of the idle window
        idle_cpu = cpu_seconds(proc.pid)
        time.sleep(window_s)
        idle_cpu = cpu_seconds(proc.pid) - idle_cpu
        config.write_text(_config(ports, interval_s))
        proc.send_signal(signal.SIGHUP)  # reload with the targets
        time.sleep(interval_s * 1.5)  # first scrapes open connections and create the series
        start_cpu, start_scrapes = cpu_seconds(proc.pid), _scrape_count(web_port)
        time.sleep(window_s)
        cpu, scrapes = cpu_seconds(proc.pid) - start_cpu, _scrape_count(web_port) - start_scrapes
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    if scrapes <= 0:
        raise RuntimeError("prometheus scraped nothing")
    figures = PrometheusFigures(
        version_text, scrapes, cpu / scrapes * 1e6, max(0.0, cpu - idle_cpu) / scrapes * 1e6, interval_s, window_s
    )
    with contextlib.suppress(OSError):
        PROMETHEUS_BASELINE.write_text(json.dumps({**figures._asdict(), "measured_at": time.time()}, indent=1) + "\n")
    return figures


def stored_prometheus() -> dict[str, object] | None:
    try:
        return json.loads(PROMETHEUS_BASELINE.read_text())
    except (OSError, ValueError):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
