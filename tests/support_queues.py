"""Shared by the queue tests: a config on the test's Redis prefix, principals, Node BullMQ, SLOWLOG reading."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import redis

from actions.auth import Principal
from tests.support import REPO_ROOT

NODE_DIR = Path(REPO_ROOT) / "tests" / "node"
OPERATOR = Principal("olga", "operator", "cli")
VIEWER = Principal("vic", "viewer", "cli")
ADMIN = Principal("ada", "admin", "cli")


def write_queue_config(directory: Path, redis_url: str, prefix: str, cli_role: str = "operator") -> Path:
    config = directory / f"fleet-{cli_role}.yaml"
    config.write_text(
        f"""
state_dir: {directory / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: 20000, end: 20010}}
redis:
  - name: main
    url: {redis_url}
    queue_prefixes: [{prefix}]
store: {{url: "sqlite:///{directory / "fleetdeck.db"}"}}
dashboard: {{embedded_collector: false}}
auth:
  cli_roles: {{"*": {cli_role}}}
"""
    )
    return config


def run_cli(config_file: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    return subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(config_file), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False)


def ensure_node_helper() -> None:
    """tests/node/node_modules from the pinned lockfile (`make test` runs `npm ci` there; this covers a bare run)."""
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300,
                       capture_output=True)


def node(redis_url: str, prefix: str, queue: str, op: str, timeout_s: float = 20.0, **request: Any) -> dict:
    """One request to Node BullMQ (tests/node/bullmq_helper.mjs); its JSON answer."""
    payload = json.dumps({"redis": redis_url, "prefix": prefix, "queue": queue, "op": op,
                          "timeout_ms": int(timeout_s * 1000), **request})
    done = subprocess.run(["node", str(NODE_DIR / "bullmq_helper.mjs"), payload], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=timeout_s + 15, check=False)
    assert done.returncode == 0, f"node {op} failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def slow_calls(redis_url: str, prefix: str, since_id: int) -> list[tuple[int, str]]:
    """SLOWLOG entries (Redis's own timing, over slowlog-log-slower-than µs) that touched `prefix`, after id."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.slowlog_get(1024)
    finally:
        client.close()
    out = []
    for entry in entries:
        if int(entry["id"]) <= since_id:
            continue
        command = entry["command"].decode("utf-8", "replace") if isinstance(entry["command"], bytes) else str(
            entry["command"])
        if prefix in command:
            out.append((int(entry["duration"]), command[:200]))
    return out


def slowlog_mark(redis_url: str) -> tuple[int, int]:
    """(the newest SLOWLOG id, the threshold in µs) before a measured section."""
    client = redis.Redis.from_url(redis_url)
    try:
        newest = client.slowlog_get(1)
        threshold = int(client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
        return (int(newest[0]["id"]) if newest else -1), threshold
    finally:
        client.close()
