"""Small helpers shared by the tests: free ports, waiting for HTTP, per-run names."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The interpreter running the tests: spawned Python processes get the same packages (and the editable install).
PYTHON = sys.executable
PG_ADMIN_DSN = os.environ.get("FLEETDECK_TEST_PG", "postgresql://127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FLEETDECK_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it, so parallel runs don't collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        start = free_port()
        if start + count > 65000:
            continue
        ok = True
        for port in range(start, start + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start
    raise RuntimeError(f"no block of {count} free ports")


def wait_http(url: str, timeout_s: float = 20.0, expect_status: int | None = 200) -> int:
    """Poll `url` until it answers (with `expect_status` when given); returns the status."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if expect_status is None or response.status == expect_status:
                    return int(response.status)
                last = response.status
        except urllib.error.HTTPError as error:
            last = error.code
            if expect_status is None or error.code == expect_status:
                return int(error.code)
        except OSError as error:
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout_s}s (last: {last})")


def unique_name(stem: str) -> str:
    return f"{stem}_{RUN_ID}_{uuid.uuid4().hex[:6]}"


def cli_roles_for_this_user(role: str = "admin") -> dict[str, str]:
    """auth.cli_roles naming the OS user running the tests (the CLI's identity is its effective uid)."""
    import pwd

    return {pwd.getpwuid(os.geteuid()).pw_name: role, "*": "viewer"}
