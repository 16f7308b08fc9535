"""The health probe of actions and `status` (core.process.http_get) is bounded in total time and size.

Real sockets on loopback: a small threaded server in this process sends a trickled body, a 100 MB body, an
endless chunked body and a normal answer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from core.process import http_get


def _serve(conn: socket.socket, kind: str, stop: threading.Event) -> None:
    try:
        conn.recv(65536)
        if kind == "ok":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif kind == "trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b" ")
        elif kind == "trickle_headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"X-A: b\r\n")
        elif kind == "huge":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            block = b" " * 65536
            while not stop.is_set():
                conn.sendall(block)
        elif kind == "chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
            while not stop.is_set():
                conn.sendall(chunk)
    except OSError:
        pass
    finally:
        conn.close()


@pytest.fixture
def server() -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            kind = conn.recv(64, socket.MSG_PEEK).split(b" ")[1].decode().strip("/")
            threading.Thread(target=_serve, args=(conn, kind, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_normal_answer(server: str) -> None:
    assert http_get(f"{server}/ok", 2.0) == (200, b"ok")


@pytest.mark.parametrize("kind", ["trickle", "trickle_headers", "huge", "chunked"])
def test_hostile_bodies_end_within_the_total_timeout(server: str, kind: str) -> None:
    started = time.monotonic()
    status, body = http_get(f"{server}/{kind}", 1.0)
    elapsed = time.monotonic() - started
    assert (status, body) == (0, b"")
    assert elapsed < 2.0, f"{kind} held the probe {elapsed:.1f}s past a 1 s timeout"


def test_refused_and_malformed_urls() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    assert http_get(f"http://127.0.0.1:{port}/", 1.0) == (0, b"")
    assert http_get("http://127.0.0.1:notaport/", 1.0) == (0, b"")
    assert http_get("ftp://127.0.0.1/", 1.0) == (0, b"")
