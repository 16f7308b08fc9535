"""A stand-in replica for backend and nginx tests: a tiny HTTP server started as a real process, light enough to run
several per test, plus the fleet config that runs it under the local backend and the cleanup that kills what a test
left behind (by the pids recorded in the store, never by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from core.config import FleetConfig, parse_config
from core.process import pid_alive
from core.store import Store

# A stand-in replica: answers /health, /readyz and POST /work/echo with its instance id; with --ignore-term it
# ignores SIGTERM so the SIGKILL escalation can be tested. Light enough to start several per test.
STANDIN_APP = r'''
import argparse, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--instance-id", required=True)
parser.add_argument("--ignore-term", action="store_true")
args = parser.parse_args()
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, {"status": "pass", "instanceId": args.instance_id, "path": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer(200, {"instanceId": args.instance_id, "requestId": self.headers.get("X-Request-Id")})

    def log_message(self, *_args) -> None:
        pass


print(f"standin {args.instance_id} on {args.port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
'''


def write_standin(directory: Path) -> Path:
    script = directory / "standin_app.py"
    script.write_text(STANDIN_APP)
    return script


def standin_config(tmp_path: Path, port_start: int, extra_args: str = "", **service: object) -> FleetConfig:
    script = write_standin(tmp_path)
    data = {
        "state_dir": "run",
        "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [
            {
                "name": "web",
                "backend": "local",
                "command": f"{{python}} {script} --port {{port}} --instance-id {{instance_id}} {extra_args}".strip(),
                "ports": {"start": port_start, "end": port_start + 5},
                "replicas": 2,
                "max_replicas": 4,
                "stop_grace_s": 5,
                "boot_timeout_s": 15,
                **service,
            }
        ],
    }
    return parse_config(data, "test", tmp_path)


def cleanup(config: FleetConfig) -> None:
    """Kill whatever a test left running, by the pids recorded in the store (never by name)."""
    for record in Store(config.store_url).replicas():
        if record.pid and pid_alive(record.pid):
            os.killpg(record.pid, signal.SIGKILL)
