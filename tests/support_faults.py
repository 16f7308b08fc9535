"""Fault injection for the fault tests: a TCP proxy that can be cut and restored.

The proxy sits between a client (the sample app, fleetdeck's store) and a real server (Postgres, Redis).
`cut()` closes every open connection and stops listening, so clients see exactly what a crashed server looks
like (connection refused / reset); `freeze()` keeps every connection open but forwards nothing, like a network
path that silently drops packets (the client waits until its own timeout); `restore()` undoes either.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._frozen = threading.Event()
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopped.clear()
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped.is_set():
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        pair = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 0.5)
                if self._stopped.is_set() and a not in self._sockets:
                    return
                if self._frozen.is_set():
                    continue  # hold the bytes: nothing passes while frozen
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            self._close(a, b)

    def _close(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_now = list(self._sockets)
        self._close(*open_now)
        time.sleep(0.3)  # the accept loop notices within its 0.2 s timeout

    def freeze(self) -> None:
        """Keep connections (and accept new ones) but forward nothing."""
        self._frozen.set()

    def restore(self) -> None:
        self._frozen.clear()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.cut()
