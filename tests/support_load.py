"""A small, bounded, constant-rate POST load for the zero-drop tests of the actions.

Why not actions/proving/loadgen: the tests need per-request outcomes (which request failed, how) more than throughput,
and a modest rate (≤ 100 req/s) is plenty. Each request goes out on a *fresh* TCP connection: nginx closing idle
client keep-alives on reload can then never hit us, so every failure counted is a real failure. The counter
`closed_on_reuse` (a reused connection closed before any response byte — the reload race) exists to report that
class separately, and is 0 by construction here; `closed` (a fresh connection closed before/while answering)
is a real drop.

Every request has a unique X-Request-Id (nginx logs its own $request_id; ours identifies the failed ones here).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config import FleetConfig, parse_config


@dataclass
class LoadReport:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    closed_on_reuse: int = 0  # reload-closed keep-alives: 0 by construction (fresh connection per request)
    instances: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # "<request id>: <what happened>", first ones only
    duration_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def transport(self) -> int:
        return sum(self.transport_errors.values())

    @property
    def failed(self) -> int:
        return self.non_2xx + self.transport

    def summary(self) -> str:
        return (f"sent {self.sent} in {self.duration_s:.1f}s: {self.ok} 2xx, {self.non_2xx} non-2xx"
                f" {dict(self.statuses)}, transport errors {dict(self.transport_errors)},"
                f" closed_on_reuse {self.closed_on_reuse}, by instance {dict(self.instances)};"
                f" first failures: {self.failures[:5]}")


class PostLoad:
    """`rate` POSTs per second to http://host:port/path spread over `workers` threads, until stop()."""

    def __init__(self, host: str, port: int, path: str = "/work/echo?ms=20", rate: float = 60.0, workers: int = 8,
                 timeout_s: float = 10.0, max_requests: int = 20_000) -> None:
        self.host, self.port, self.path = host, port, path
        self.interval_s = workers / rate  # each worker's pace; workers are phase-shifted
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_requests = max_requests  # a hard bound, whatever happens to stop()
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.run_id = uuid.uuid4().hex[:8]

    def __enter__(self) -> PostLoad:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, args=(index,), daemon=True, name=f"postload-{index}")
            self._threads.append(thread)
            thread.start()

    def stop(self) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        self.report.duration_s = time.monotonic() - self._started
        return self.report

    def wait_requests(self, count: int, timeout_s: float = 10.0) -> None:
        """Block until `count` more requests have completed (proves the load is flowing)."""
        with self._lock:
            target = self.report.sent + count
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.report.sent >= target:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"load did not complete {count} requests in {timeout_s}s: {self.report.summary()}")

    def _work(self, index: int) -> None:
        next_at = time.monotonic() + index * self.interval_s / self.workers
        sequence = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at += self.interval_s
            with self._lock:
                if self.report.sent >= self.max_requests:
                    return
            sequence += 1
            self._one(f"{self.run_id}-{index}-{sequence}")

    def _one(self, request_id: str) -> None:
        body = json.dumps({"rid": request_id}).encode()
        status: int | None = None
        error: str | None = None
        instance = ""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request("POST", self.path, body=body,
                               headers={"X-Request-Id": request_id, "Content-Type": "application/json",
                                        "Connection": "close"})
            response = connection.getresponse()
            payload = response.read()
            status = response.status
            with contextlib.suppress(ValueError, AttributeError):
                instance = str(json.loads(payload).get("instance", ""))
        except ConnectionRefusedError:
            error = "connect"
        except TimeoutError:
            error = "timeout"
        except (http.client.RemoteDisconnected, http.client.IncompleteRead):
            error = "closed"  # a fresh connection closed before or while answering: a real drop
        except ConnectionResetError:
            error = "reset"
        except (OSError, http.client.HTTPException) as exc:
            error = f"other:{type(exc).__name__}"
        finally:
            connection.close()
        with self._lock:
            self.report.sent += 1
            if status is not None:
                self.report.statuses[status] += 1
                if instance:
                    self.report.instances[instance] += 1
                if not 200 <= status < 300 and len(self.report.failures) < 50:
                    self.report.failures.append(f"{request_id}: HTTP {status}")
            else:
                assert error is not None
                self.report.transport_errors[error] += 1
                if len(self.report.failures) < 50:
                    self.report.failures.append(f"{request_id}: {error}")


# --- a real fleet for the action tests: sample-app replicas behind a managed nginx ---------------------------


# The two sample apps every fleet contract test runs against: our Python app (configured by its arguments) and
# the reference Express app (configured by its environment, counting every request as in flight, probes too).
SAMPLE_APPS = ("python", "express")
APP_COMMANDS = {
    "python": ("{python} {root}/compose/sampleapp/app.py --port {port} --instance-id {instance_id}", {}),
    "express": ("node {root}/compose/expressapp/app.js", {"PORT": "{port}", "INSTANCE_ID": "{instance_id}"}),
}


def action_fleet_config(base_dir: str, pg_dsn: str, redis_url: str, key_prefix: str, port_start: int,
                        lb_port: int, replicas: int = 3, app: str = "python", **service: object) -> dict[str, object]:
    """The config mapping of a test fleet (parse it with core.config.parse_config). Replicas use the test's own
    Postgres database and a Redis key prefix; no BullMQ queues (QUEUES empty) to keep each replica light."""
    command, app_env = APP_COMMANDS[app]
    return {
        "state_dir": f"{base_dir}/run",
        "store": {"url": pg_dsn},
        "services": [
            {
                "name": "web",
                "backend": "local",
                "command": command,
                "env": {
                    **app_env,
                    "DATABASE_URL": pg_dsn,
                    "REDIS_URL": redis_url,
                    "BULLMQ_PREFIX": key_prefix,
                    "SESSION_PREFIX": f"{key_prefix}:sess:",
                    "QUEUES": "",
                    "POOL_MAX": "2",
                    "SHUTDOWN_TIMEOUT_S": "5",
                },
                "ports": {"start": port_start, "end": port_start + 9},
                "replicas": replicas,
                "min_replicas": 1,
                "max_replicas": 6,
                "min_healthy": 1,
                "stop_grace_s": 6,
                "boot_timeout_s": 30,
                "drain_timeout_s": 10,
                **service,
            }
        ],
        "load_balancer": {
            "mode": "managed",
            "service": "web",
            "listen": f"127.0.0.1:{lb_port}",
            "worker_processes": 1,
            "worker_shutdown_timeout_s": 10,
        },
        "auth": {"cli_roles": {"*": "operator"}},  # tests that need `down` on the CLI name their user as admin
    }


@contextlib.contextmanager
def running_fleet(config: FleetConfig) -> Iterator[FleetConfig]:
    """The fleet of `config` up (replicas and nginx, no dashboard), and down again whatever the test did."""
    from actions import fleet  # late: most users of this module only need the load client
    from actions.auth import Principal

    harness = Principal("test-harness", "admin", "cli")
    fleet.up(config, principal=harness, dashboard=False)
    try:
        yield config
    finally:
        fleet.down(config, principal=harness)


def written_config(base: Path, data: dict[str, Any]) -> tuple[FleetConfig, Path]:
    """`data` saved as base/fleet.yaml (the CLI reads it) and parsed the way the product parses it."""
    config_file = base / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(data))
    return parse_config(data, str(config_file), base), config_file
