"""Both sample apps (Python `compose/sampleapp`, Express `compose/expressapp`) as real processes, and plain HTTP
calls against them. One launcher serves every test that talks to an app instance directly, so the two apps are
started, configured and stopped the same way: each instance shares the test's database and BullMQ prefix and is
stopped by PID (SIGTERM, then SIGKILL) when the test ends, even when it fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support import PYTHON, REPO_ROOT, free_port, wait_http

PYTHON_APP = Path(REPO_ROOT) / "compose" / "sampleapp" / "app.py"
EXPRESS_APP = Path(REPO_ROOT) / "compose" / "expressapp" / "app.js"
READY_TIMEOUT_S = 20.0  # node or python start plus the schema lock on a busy 2-core machine


@dataclass
class AppInstance:
    app: str
    instance_id: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Reply(NamedTuple):
    """One HTTP answer; a tuple too, so `status, headers, body = call(...)` reads naturally."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> Reply:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return call("POST", url, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def stop_by_pid(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


Launcher = Callable[..., AppInstance]


@pytest.fixture
def launch(pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Launcher]:
    """`launch(instance_id, app="python"|"express", misbehave=False, wait_ready=True, **env)` starts an instance."""
    started: list[AppInstance] = []

    def start(
        instance_id: str, app: str = "python", misbehave: bool = False, wait_ready: bool = True, **env: str
    ) -> AppInstance:
        port = free_port()
        log_path = tmp_path / f"{app}-{instance_id}.log"
        full_env = {
            **os.environ,
            "DATABASE_URL": pg_dsn,
            "REDIS_URL": redis_url,
            "BULLMQ_PREFIX": redis_prefix,
            "SESSION_PREFIX": f"{redis_prefix}:sess:",
            "APP_VERSION": "1.2.3-test",
            "QUEUES": "emails,reports",
            "POOL_MAX": "5",
            "PORT": str(port),
            "INSTANCE_ID": instance_id,
            **env,
        }
        if app == "express":
            assert not misbehave, "only the Python sample app has a --misbehave mode"
            command = ["node", str(EXPRESS_APP)]
        elif app == "python":
            command = [PYTHON, str(PYTHON_APP), "--port", str(port), "--instance-id", instance_id]
            if misbehave:
                command.append("--misbehave")
        else:
            raise ValueError(f"unknown sample app {app!r}")
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
        instance = AppInstance(app, instance_id, port, process, log_path)
        started.append(instance)
        if wait_ready:
            try:
                wait_http(f"{instance.base}/readyz", timeout_s=READY_TIMEOUT_S)
            except TimeoutError as error:
                raise AssertionError(f"{instance_id} never became ready; log:\n{instance.log()}") from error
        return instance

    yield start
    for instance in started:
        stop_by_pid(instance.process)
