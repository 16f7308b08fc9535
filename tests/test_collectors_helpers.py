"""Shared helpers for the collector tests: tiny real HTTP servers as subprocesses, stopped by PID.

(No tests here; the name only keeps the file inside the collector area.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import PYTHON, wait_http

# A real HTTP/1.1 keep-alive server: routes = {path: [status, content_type, body]}, "*" matches any path.
SERVER_CODE = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, routes = int(sys.argv[1]), json.loads(sys.argv[2])
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        status, ctype, body = routes.get(self.path.split("?")[0]) or routes.get("*") or [404, "text/plain", "no"]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._answer()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def start_server(port: int, routes: dict[str, list[object]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PYTHON, "-c", SERVER_CODE, str(port), json.dumps(routes)])
    try:
        wait_http(f"http://127.0.0.1:{port}/__ready", timeout_s=15, expect_status=None)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def servers(routes_by_port: dict[int, dict[str, list[object]]]) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    started: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port, routes in routes_by_port.items():
            started[port] = start_server(port, routes)
        yield started
    finally:
        for proc in started.values():
            stop(proc)


__all__ = ["SERVER_CODE", "servers", "start_server", "stop", "sys"]
