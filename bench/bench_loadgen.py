"""fleetdeck's load generator vs wrk, back to back, same connections and duration.

    PYTHONPATH=. .venv/bin/python bench/bench_loadgen.py           # against an nginx `return 200` we start
    PYTHONPATH=. .venv/bin/python bench/bench_loadgen.py --url http://127.0.0.1:8088/ --workers 2
                                                                   # e.g. the managed nginx

Each round runs wrk, then our generator, against the same URL; ratios are per round (pairs share the machine's
momentary load), and the median ratio is the figure to quote. Goals: >= 0.6x wrk on nginx `return 200`,
>= 0.85x through nginx to the sample app (where the servers, not the clients, are the limit).
Only loopback URLs are accepted (the generator's guard refuses anything else).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from actions.proving.loadgen import LoadSpec, check_target, run_load
from tests.support import free_port, wait_http

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


class Measure(NamedTuple):
    rps: float
    p99_ms: float
    extra: str = ""


def start_nginx(prefix: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, workers=workers))
    process = subprocess.Popen(["/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf)])
    url = f"http://127.0.0.1:{port}/"
    wait_http(url, timeout_s=15)
    return process, url


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, connections: int, duration_s: int, threads: int) -> Measure:
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration_s + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\n\s+99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", output)
    return Measure(rps, float(value) * _UNITS_MS[unit], errors.group(0) if errors else "")


def run_ours(url: str, connections: int, duration_s: int, workers: int) -> Measure:
    result = run_load(
        LoadSpec(url, connections=connections, duration_s=duration_s, max_requests=50_000_000, workers=workers),
        handle_sigint=False,
    )
    extra = f"cpu {result.cpu_per_request_us:.1f} us/req, util {result.cpu_utilization:.2f}"
    if result.errors:
        extra += f", errors {result.errors_by_kind}"
    return Measure(result.rps, result.latency_ms["p99"], extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="loopback URL to bench (default: an nginx `return 200` started here)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="wrk/ours pairs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="generator processes to try")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--nginx-workers", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    nginx: subprocess.Popen[bytes] | None = None
    prefix = Path(tempfile.mkdtemp(prefix="fleetdeck-bench-"))
    try:
        if args.url:
            check_target(args.url)  # refuse non-loopback before wrk sends anything either
            url = args.url
        else:
            nginx, url = start_nginx(prefix, args.nginx_workers)
        print(f"target {url}  connections {args.connections}  {args.duration} s per run  cpus {os.cpu_count()}")
        print(f"{'round':>5} {'client':<12} {'req/s':>10} {'p99 ms':>8} {'ratio':>6}  notes")
        ratios: dict[int, list[float]] = {workers: [] for workers in args.workers}
        for round_number in range(1, args.rounds + 1):
            for workers in args.workers:
                wrk = run_wrk(url, args.connections, args.duration, args.wrk_threads)
                ours = run_ours(url, args.connections, args.duration, workers)
                ratio = ours.rps / wrk.rps if wrk.rps else 0.0
                ratios[workers].append(ratio)
                print(
                    f"{round_number:>5} {'wrk -t' + str(args.wrk_threads):<12} {wrk.rps:>10.0f} {wrk.p99_ms:>8.2f}"
                    f" {'':>6}  {wrk.extra}"
                )
                print(
                    f"{round_number:>5} {'fleetdeck x' + str(workers):<12} {ours.rps:>10.0f} {ours.p99_ms:>8.2f}"
                    f" {ratio:>6.2f}  {ours.extra}"
                )
        for workers, values in ratios.items():
            print(
                f"median ratio fleetdeck x{workers} / wrk: {statistics.median(values):.2f}"
                f"  (rounds: {', '.join(f'{v:.2f}' for v in values)})"
            )
    finally:
        if nginx is not None and nginx.poll() is None:
            os.kill(nginx.pid, signal.SIGQUIT)
            nginx.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
