"""A blocking HTTP GET for health probes outside the collector (actions, `status`), bounded in size and time.

urllib's ``timeout`` applies to each socket operation, so a server that trickles one byte a second keeps a probe
(and the action lock held around it) waiting for ever, and ``read()`` takes a 100 MB body whole. Here:
- ``timeout_s`` is the total time of the exchange (connect, request, headers, body): a timer shuts the socket
  down at the deadline, which ends whatever read is pending;
- the body is read up to ``max_bytes``; a longer body, like a timeout, counts as no answer (status 0);
- no redirects are followed and no compression is asked for (``Accept-Encoding: identity``).
docs/security.md lists these bounds.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from urllib.parse import urlsplit

PROBE_MAX_BYTES = 1 << 20  # health bodies are a few KiB; nginx status and Streamlit's health are smaller still
_READ_CHUNK = 64 << 10


def http_get(url: str, timeout_s: float, max_bytes: int = PROBE_MAX_BYTES) -> tuple[int, bytes]:
    """(status, body); status 0 means no usable HTTP answer (refused, timeout, over the size cap, not HTTP)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            return 0, b""
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        port = parts.port
    except ValueError:  # a malformed port or host
        return 0, b""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout_s
    connection = connection_class(host, port, timeout=timeout_s)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read with EOF/error

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.request("GET", path, headers={"Accept-Encoding": "identity", "User-Agent": "fleetdeck-probe"})
        response = connection.getresponse()
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or expired.is_set():
                return 0, b""
            if connection.sock is not None:
                connection.sock.settimeout(remaining)
            chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                return 0, b""
        if expired.is_set():  # the EOF came from our own shutdown: the body may be cut short
            return 0, b""
        return int(response.status), b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError):
        return 0, b""
    finally:
        timer.cancel()
        connection.close()


__all__ = ["PROBE_MAX_BYTES", "http_get"]
