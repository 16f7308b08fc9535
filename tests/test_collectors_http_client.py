"""collectors/http_client.py against real HTTP servers on loopback (subprocesses, stopped by PID).

One scripted raw-socket server answers each path the way a real server may: Content-Length, chunked (as Express
does when a handler streams), close-delimited, `Connection: close`, a hang, and a server that closes idle
keep-alive connections. Every accepted connection is counted, so keep-alive reuse is observable from outside.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest

from collectors.http_client import HttpClient, HttpConnectError, HttpProtocolError, HttpTimeoutError
from tests.support import PYTHON, free_port, wait_http
from tests.test_collectors_helpers import stop

# A raw HTTP/1.1 server (threads, one per connection) so each framing is exactly what we say it is.
SERVER = r"""
import socket, sys, threading, time
port = int(sys.argv[1])
accepted = 0
lock = threading.Lock()
BODY = b'{"status":"ok","uptime":12.5}'

def respond(conn, path):
    global accepted
    if path == "/length":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
                     + str(len(BODY)).encode() + b"\r\nX-Powered-By: Express\r\n\r\n" + BODY)
    elif path == "/chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head + b"a;ext=1\r\n" + BODY[:10] + b"\r\n")
        time.sleep(0.02)  # the rest arrives in later segments
        conn.sendall(b"%x\r\n" % (len(BODY) - 10) + BODY[10:] + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
    elif path == "/close":
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: 4\r\n\r\ndown")
        return False
    elif path == "/eof-body":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        return False
    elif path == "/hang":
        time.sleep(30)
        return False
    elif path == "/truncated":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        return False
    elif path == "/idle-close":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.05)
        return False  # closes an idle keep-alive connection without saying so, like a keep-alive timeout
    elif path == "/accepted":
        with lock:
            n = str(accepted).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(n)).encode() + b"\r\n\r\n" + n)
    else:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return True

def serve(conn):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if not respond(conn, path):
                return
    finally:
        conn.close()

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    with lock:
        accepted += 1
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", SERVER, str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/length", timeout_s=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def _accepted(base: str) -> int:
    """Connections the server accepted so far, the probe's own connection included."""
    probe = HttpClient()
    try:
        return int((await probe.get(base + "/accepted", 2)).body)
    finally:
        await probe.aclose()


async def _opened_since(base: str, before: int) -> int:
    return await _accepted(base) - before - 1  # minus this probe's own connection


def test_content_length_keep_alive_reuse(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient(headers={"User-Agent": "fleetdeck-test"})
        before = await _accepted(server)
        for _ in range(5):
            response = await client.get(server + "/length", 2)
            assert response.status == 200 and response.body == b'{"status":"ok","uptime":12.5}'
            assert response.content_type == "application/json; charset=utf-8"
            assert response.headers["x-powered-by"] == "Express"
            assert response.text() == '{"status":"ok","uptime":12.5}'
        assert await _opened_since(server, before) == 1  # five requests, one connection
        await client.aclose()

    asyncio.run(scenario())


def test_chunked_body_with_extensions_and_trailers(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient()
        before = await _accepted(server)
        for _ in range(3):
            response = await client.get(server + "/chunked", 2)
            assert response.status == 200 and response.body == b'{"status":"ok","uptime":12.5}'
        assert await _opened_since(server, before) == 1  # a chunked body keeps the connection too
        await client.aclose()

    asyncio.run(scenario())


def test_connection_close_and_close_delimited_bodies(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient()
        before = await _accepted(server)
        first = await client.get(server + "/close", 2)
        assert (first.status, first.body) == (503, b"down")
        eof = await client.get(server + "/eof-body", 2)
        assert (eof.status, eof.body) == (200, b"until the end")
        again = await client.get(server + "/length", 2)
        assert again.status == 200
        assert await _opened_since(server, before) == 3  # neither closed connection was reused
        await client.aclose()

    asyncio.run(scenario())


def test_server_closing_idle_connection_is_retried_on_a_fresh_one(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient()
        assert (await client.get(server + "/idle-close", 2)).body == b"ok"
        await asyncio.sleep(0.2)  # the server has closed the kept connection meanwhile
        assert (await client.get(server + "/length", 2)).status == 200
        # the same race without the pause: the close lands while the request is in flight
        assert (await client.get(server + "/idle-close", 2)).body == b"ok"
        assert (await client.get(server + "/length", 2)).status == 200
        await client.aclose()

    asyncio.run(scenario())


def test_timeout_then_the_next_request_works(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient()
        started = time.monotonic()
        with pytest.raises(HttpTimeoutError, match=r"timeout after 0\.3s"):
            await client.get(server + "/hang", 0.3)
        assert time.monotonic() - started < 2
        # a reused connection that hangs times out as well (not retried as a stale one)
        assert (await client.get(server + "/length", 2)).status == 200
        with pytest.raises(HttpTimeoutError):
            await client.get(server + "/hang", 0.3)
        assert (await client.get(server + "/length", 2)).status == 200
        await client.aclose()

    asyncio.run(scenario())


def test_truncated_body_refused_and_unreachable_port(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient()
        with pytest.raises(HttpProtocolError, match="mid-response"):
            await client.get(server + "/truncated", 2)
        with pytest.raises(HttpConnectError, match="cannot connect"):
            await client.get(f"http://127.0.0.1:{free_port()}/health", 2)
        await client.aclose()

    asyncio.run(scenario())


def test_concurrent_requests_to_one_endpoint(server: str) -> None:
    async def scenario() -> None:
        client = HttpClient(max_idle_per_host=2)
        results = await asyncio.gather(*(client.get(server + "/chunked", 2) for _ in range(10)))
        assert all(r.body == b'{"status":"ok","uptime":12.5}' for r in results)
        await client.aclose()

    asyncio.run(scenario())
