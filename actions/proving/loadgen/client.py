"""A minimal HTTP/1.1 keep-alive client on asyncio (uvloop when available), and the two load modes built on it.

Why not aiohttp/httpx: measured at 0.10× and 0.004× wrk on this machine (docs/design-notes.md#load-generation); a bare
stream client with uvloop reached 0.66×. This module goes one layer lower than StreamReader — an asyncio Protocol that
parses in `data_received` — which cut the CPU per request from ~15 to ~9.5 µs (measured here, uvloop). It does only what
a load generator needs: write one prepared request, parse the status line and headers (Content-Length, chunked, or
read-until-close body), keep the connection for the next request.

Every started request ends in exactly one outcome: an HTTP status (counted per code) or one transport error kind:
- `connect`: the connection could not be opened;
- `timeout`: no complete response within the request timeout (the watchdog aborts the connection);
- `closed_on_reuse`: the request went out on a reused keep-alive connection and the peer closed it before sending
  a single byte back — the reload/keep-alive-timeout race; the request may or may not have been processed, so it
  is NOT retried (POSTs are not idempotent) but is reported apart from other closes;
- `closed`: the peer closed the connection in the middle of a response, or before any response on a fresh one;
- `reset`: the connection was reset (ECONNRESET/EPIPE);
- `protocol`: the response was not parseable HTTP/1.x.
Besides outcomes, `idle_closes` counts keep-alive connections found closed by the peer *before* the request was
written (e.g. nginx closing idle connections on reload): nothing was sent, so the request is sent on a new
connection and its outcome counted once. Requests still in flight when a run is cancelled count as `cancelled`.

Size (~580 lines): the load generator's hot path; the protocol, the connection handling and both load modes
share per-request state in tight loops that bench/bench_loadgen.py measures as one unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from actions.proving.loadgen.histogram import SUB as _SUB
from actions.proving.loadgen.histogram import Histogram, bucket_of
from actions.proving.loadgen.shapes import LoadShape

TRANSPORT_ERRORS = ("connect", "timeout", "closed_on_reuse", "closed", "reset", "protocol")
USER_AGENT = "fleetdeck-loadgen/1"
_READ_LIMIT = 1 << 20  # longest response header block accepted
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


class Target(NamedTuple):
    host: str  # as written in the URL (goes into the Host header)
    port: int
    path: str  # path with query string
    connect_host: str  # the address actually dialled (the loopback guard may pin it to a resolved IP)

    @property
    def host_header(self) -> str:
        return self.host if self.port == 80 else f"{self.host}:{self.port}"


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url}: only plain http:// URLs are supported by the load generator")
    if not parts.hostname:
        raise ValueError(f"{url}: no host in the URL")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    host = parts.hostname
    return Target(host if ":" not in host else f"[{host}]", parts.port or 80, path, host)


class RequestTemplate:
    """The request bytes, prepared once; only the X-Request-Id changes per request."""

    def __init__(
        self,
        target: Target,
        method: str = "GET",
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        id_prefix: str = "lg",
    ) -> None:
        method = method.upper()
        lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}", f"User-Agent: {USER_AGENT}"]
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        if "accept" not in names:
            lines.append("Accept: */*")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\nX-Request-Id: " + id_prefix).encode("latin-1")
        self._before_seq = head
        self._after_seq = b"\r\n\r\n" + body
        self.expects_body = method != "HEAD"

    def build(self, seq: int) -> bytes:
        return self._before_seq + b"%d" % seq + self._after_seq


class TransportError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class WorkerStats:
    """Counters of one event loop. Plain attributes and dicts: this is on the hot path."""

    def __init__(self) -> None:
        self.histogram = Histogram()
        self.status_counts: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.instances: dict[bytes, int] = {}
        self.started = 0
        self.responses = 0
        self.idle_closes = 0
        self.connects = 0
        self.cancelled = 0
        self.unsent = 0  # open loop: requests scheduled but not started before the run ended
        self.bytes_received = 0
        self.last_error = ""

    def snapshot(self) -> dict[str, object]:
        """JSON-able cumulative counters (what worker processes send to the parent)."""
        return {
            "histogram": self.histogram.to_dict(),
            "status_counts": {str(code): count for code, count in self.status_counts.items()},
            "errors": dict(self.errors),
            "instances": {key.decode("latin-1"): count for key, count in self.instances.items()},
            "started": self.started,
            "responses": self.responses,
            "idle_closes": self.idle_closes,
            "connects": self.connects,
            "cancelled": self.cancelled,
            "unsent": self.unsent,
            "bytes_received": self.bytes_received,
            "last_error": self.last_error,
        }


# (status, X-Instance-Id value, connection reusable, bytes received); a plain tuple: built once per request
_Response = tuple[int, bytes | None, bool, int]


def _chunked_end(buf: bytes, pos: int) -> tuple[int, int]:
    """(end of the chunked body or -1 when incomplete, position to resume scanning from)."""
    while True:
        line_end = buf.find(_CRLF, pos)
        if line_end < 0:
            return -1, pos
        size = int(buf[pos:line_end].split(b";", 1)[0].strip(), 16)
        if size == 0:
            after = line_end + 2
            if buf[after : after + 2] == _CRLF:
                return after + 2, pos
            trailers_end = buf.find(_HEAD_END, line_end)  # trailers end with an empty line
            return (trailers_end + 4 if trailers_end >= 0 else -1), pos
        next_pos = line_end + 2 + size + 2
        if next_pos > len(buf):
            return -1, pos
        pos = next_pos


class _HttpProtocol(asyncio.Protocol):
    """Parses responses straight from `data_received` and resolves one waiter per request.

    Why a Protocol and not StreamReader: on this machine the streams version costs ~15 µs of CPU per request and
    this one ~9.5 µs (measured against nginx `return 200`, 50 connections, uvloop); the generator shares the two
    cores with the servers it measures, so every microsecond counts twice.
    """

    __slots__ = (
        "buffer",
        "chunk_pos",
        "closed",
        "expects_body",
        "head",
        "received",
        "reused",
        "timed_out",
        "transport",
        "waiter",
    )

    def __init__(self, expects_body: bool) -> None:
        self.expects_body = expects_body
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[_Response] | None = None
        self.buffer = b""
        self.head: tuple[int, bytes | None, bool, int, int] | None = None  # status, instance, keep-alive, end, length
        self.chunk_pos = 0
        self.received = 0  # bytes of the current response so far
        self.reused = False
        self.closed = False  # the peer sent EOF or the connection is gone
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, waiter: asyncio.Future[_Response], reused: bool) -> None:
        self.waiter = waiter
        self.buffer = b""
        self.head = None
        self.received = 0
        self.reused = reused
        self.timed_out = False
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None:
            # bytes nobody asked for: the connection's framing is lost; never reuse it
            self.closed = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.received += len(data)
        buf = self.buffer + data if self.buffer else data
        head = self.head
        try:
            if head is None:
                head = self._parse_head(buf)
                if head is None:
                    self.buffer = buf
                    return
                buf = self.buffer  # without any 1xx interim response
            status, instance, keep_alive, end, length = head
            if length >= 0:
                total = end + length
                if len(buf) < total:
                    self.buffer = buf
                    return
            elif length == -1:  # chunked
                total, self.chunk_pos = _chunked_end(buf, self.chunk_pos)
                if total < 0:
                    self.buffer = buf
                    return
            else:  # length == -2: the body runs until the server closes
                self.buffer = buf
                return
        except ValueError as error:
            self._fail(TransportError("protocol", str(error)))
            return
        self.buffer = b""
        self.waiter = None
        if not waiter.done():  # done when cancelled meanwhile
            waiter.set_result((status, instance, keep_alive and len(buf) == total, self.received))

    def _parse_head(self, buf: bytes) -> tuple[int, bytes | None, bool, int, int] | None:
        """Status, instance id, keep-alive, end of head, body length (-1 chunked, -2 until close); None if partial.

        Plain `find`s on the lower-cased head block instead of splitting it into lines: this runs once per response
        and is about half the cost of a line-by-line parse.
        """
        end = buf.find(_HEAD_END)
        if end < 0:
            if len(buf) > _READ_LIMIT:
                raise ValueError(f"response header block longer than {_READ_LIMIT} bytes")
            return None
        if not buf.startswith(b"HTTP/1.") or buf[8] != 32:  # 32: the space after the version
            raise ValueError(f"bad status line {buf[:40]!r}")
        status = int(buf[9:12])
        if status < 200:  # 1xx interim response: the real one follows
            self.buffer = buf[end + 4 :]
            return self._parse_head(self.buffer)
        end += 4
        lower = buf[:end].lower()
        keep_alive = buf[7] == 49  # 49: "1" in HTTP/1.1; HTTP/1.0 closes unless told otherwise
        # the Connection header only matters when it says close (or keep-alive on HTTP/1.0): one scan for "close"
        # skips the header lookup for the usual keep-alive answer
        at = lower.find(b"\r\nconnection:") if (not keep_alive or b"close" in lower) else -1
        if at >= 0:
            value = lower[at + 13 : lower.find(_CRLF, at + 2)]
            if b"close" in value:
                keep_alive = False
            elif b"keep-alive" in value:
                keep_alive = True
        at = lower.find(b"\r\nx-instance-id:")
        instance = buf[at + 16 : lower.find(_CRLF, at + 2)].strip() if at >= 0 else None
        if not self.expects_body or status == 204 or status == 304:
            length = 0
        else:
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                length = int(buf[at + 17 : lower.find(_CRLF, at + 2)])
            elif b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
                length = -1
                self.chunk_pos = end
            else:
                length = -2
                keep_alive = False
        head = self.head = (status, instance, keep_alive, end, length)
        self.buffer = buf
        return head

    def _finish(self, response: _Response) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, error: TransportError) -> None:
        self.closed = True
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.closed = True
        head = self.head
        if self.waiter is not None and head is not None and head[4] == -2:
            self._finish((head[0], head[1], False, self.received))
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None:
            return
        head = self.head
        if head is not None and head[4] == -2 and exc is None:
            self._finish((head[0], head[1], False, self.received))
            return
        if self.timed_out:
            kind = "timeout"
        elif self.reused and self.received == 0:
            # the keep-alive race: the peer closed the connection as our request arrived (nginx reload,
            # keep-alive timeout); it may or may not have processed it, so this is never retried
            kind = "closed_on_reuse"
        elif exc is None:
            kind = "closed"
        else:
            kind = "reset"
        self._fail(TransportError(kind, f"{self.received} bytes of response before the connection ended"))


class Connection:
    """One slot's TCP connection, re-opened when the peer closes it."""

    __slots__ = ("busy_since", "owner", "protocol", "uses")

    def __init__(self, owner: LoadClient) -> None:
        self.owner = owner
        self.protocol: _HttpProtocol | None = None
        self.uses = 0  # responses read on the current TCP connection
        self.busy_since = 0.0  # perf_counter() when the current request started; 0 when idle

    def drop(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()  # no graceful close: we don't want to wait for anything
        self.protocol = None
        self.uses = 0

    def abort_for_timeout(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.timed_out = True
            protocol.transport.abort()

    async def connect(self) -> _HttpProtocol:
        owner = self.owner
        loop = asyncio.get_running_loop()
        expects_body = owner.expects_body
        try:
            async with asyncio.timeout(owner.timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _HttpProtocol(expects_body), owner.target.connect_host, owner.target.port
                )
        except (OSError, TimeoutError) as error:
            raise TransportError("connect", str(error) or type(error).__name__) from None
        owner.stats.connects += 1
        self.protocol = protocol
        self.uses = 0
        return protocol


def _no_loop_yet() -> asyncio.Future[_Response]:
    raise RuntimeError("LoadClient requests run inside run_closed() / run_open()")


class LoadClient:
    """One event loop's share of a load run: its connections, its counters, its stop switch.

    `remaining` is the request budget of this loop; `stop()` ends the run gracefully (no new requests, in-flight
    ones finish within the timeout); `cancel()` (via task cancellation) abandons in-flight requests.
    """

    def __init__(
        self,
        target: Target,
        template: RequestTemplate,
        connections: int,
        max_requests: int,
        timeout_s: float = 5.0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.target = target
        self.template = template
        self.expects_body = template.expects_body
        self.connections = [Connection(self) for _ in range(connections)]
        self.remaining = max_requests
        self.timeout_s = timeout_s
        self.stats = WorkerStats()
        self.stopping = False
        self._seq = 0
        self._open_queue: deque[float] = deque()
        self._open_wakeup: asyncio.Event | None = None
        self._dispatch_done = False
        self._create_future: Callable[[], asyncio.Future[_Response]] = _no_loop_yet

    def stop(self) -> None:
        """No new request starts after this; in-flight ones finish (bounded by the timeout watchdog)."""
        self.stopping = True
        if self._open_wakeup is not None:
            self._open_wakeup.set()

    async def _watchdog(self) -> None:
        """Aborts connections whose request outlived the timeout: one timer for all, not one per request."""
        interval = min(max(self.timeout_s / 10, 0.01), 0.1)
        while True:
            await asyncio.sleep(interval)
            limit = time.perf_counter() - self.timeout_s
            for connection in self.connections:
                if connection.busy_since and connection.busy_since < limit:
                    connection.abort_for_timeout()

    async def _slot(self, connection: Connection, open_loop: bool) -> None:
        """One connection's request loop; every started request's outcome is counted exactly once.

        Closed loop: the next request starts when the previous answer arrived. Open loop: requests start when the
        dispatcher queues them, and latency counts from the scheduled time, so waiting for a free connection is
        visible (no coordinated omission). One flat coroutine on purpose: it is the hot path, and a coroutine layer
        per request costs ~1 µs.
        """
        stats = self.stats
        build = self.template.build
        create_future = self._create_future
        perf_counter = time.perf_counter
        queue = self._open_queue
        wakeup = self._open_wakeup
        errors = stats.errors
        counts = stats.status_counts
        instances = stats.instances
        histogram = stats.histogram
        histogram_counts = histogram.counts
        while not self.stopping:
            if open_loop:
                if not queue:
                    if self._dispatch_done:
                        return
                    assert wakeup is not None
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                started_at = queue.popleft()
            else:
                if self.remaining <= 0:
                    return
                self.remaining -= 1
                started_at = perf_counter()
            seq = self._seq
            self._seq = seq + 1
            stats.started += 1
            try:
                protocol = connection.protocol
                if protocol is not None and (protocol.closed or protocol.transport.is_closing()):  # type: ignore[union-attr]
                    # the peer closed this idle keep-alive connection; nothing was sent, so retrying is safe
                    stats.idle_closes += 1
                    connection.drop()
                    protocol = None
                if protocol is None:
                    protocol = await connection.connect()
                waiter = create_future()
                connection.busy_since = perf_counter()
                protocol.send(build(seq), waiter, connection.uses > 0)
                status, instance, keep_alive, size = await waiter
            except TransportError as error:
                connection.drop()
                errors[error.kind] = errors.get(error.kind, 0) + 1
                stats.last_error = str(error)
                continue
            except OSError as error:  # a write on a connection the kernel already knows is dead
                connection.drop()
                errors["reset"] = errors.get("reset", 0) + 1
                stats.last_error = f"reset: {error}"
                continue
            except asyncio.CancelledError:
                stats.cancelled += 1
                connection.drop()
                raise
            finally:
                connection.busy_since = 0.0
            if keep_alive:
                connection.uses += 1
            else:
                connection.drop()
            stats.bytes_received += size
            stats.responses += 1
            counts[status] = counts.get(status, 0) + 1
            if instance is not None:
                instances[instance] = instances.get(instance, 0) + 1
            # Histogram.record_us, inlined
            latency_us = int((perf_counter() - started_at) * 1_000_000)
            histogram_counts[latency_us if latency_us < _SUB else bucket_of(latency_us)] += 1
            if latency_us > histogram.max_us:
                histogram.max_us = latency_us
            if latency_us < histogram.min_us or not histogram.total:
                histogram.min_us = latency_us
            histogram.total += 1
            histogram.sum_us += latency_us

    async def run_closed(self) -> None:
        """Every connection sends its next request as soon as the previous answer arrived."""
        await self._run_slots(open_loop=False)

    async def _dispatch(self, shape: LoadShape, share: float) -> None:
        """Queues floor(share · shape.scheduled(t)) requests by elapsed time t; stops when the shape ends."""
        perf_counter = time.perf_counter
        queue = self._open_queue
        wakeup = self._open_wakeup
        assert wakeup is not None
        start = perf_counter()
        issued = 0
        while not self.stopping and self.remaining > 0:
            now = perf_counter()
            elapsed = now - start
            rate = shape.tick(elapsed)
            if rate is None:
                break
            due = min(int(shape.scheduled(elapsed) * share + 1e-9) - issued, self.remaining)
            if due > 0:
                queue.extend([now] * due)
                issued += due
                self.remaining -= due
                wakeup.set()
            own_rate = rate * share
            # sleep to the next due request, but >= 1 ms: uvloop's timers have 1 ms resolution, and shorter sleeps
            # turn into a busy loop; requests due meanwhile go out together on the next wake-up
            await asyncio.sleep(min(max(1.0 / own_rate, 0.001), 0.05) if own_rate > 0 else 0.05)

    async def run_open(self, shape: LoadShape, share: float = 1.0) -> None:
        """Requests start on the shape's schedule (this loop's `share` of it) whatever the server's pace."""
        self._open_queue.clear()
        self._open_wakeup = asyncio.Event()

        self._dispatch_done = False

        async def dispatch_then_drain() -> None:
            try:
                await self._dispatch(shape, share)
            finally:
                # the slots send what is still queued, then return (or stop at once when stop() was called)
                self._dispatch_done = True
                wakeup = self._open_wakeup
                assert wakeup is not None
                wakeup.set()

        await self._run_slots(open_loop=True, extra=dispatch_then_drain())

    async def _run_slots(self, open_loop: bool, extra: Coroutine[Any, Any, None] | None = None) -> None:
        self._create_future = asyncio.get_running_loop().create_future
        watchdog = asyncio.ensure_future(self._watchdog())
        tasks = [asyncio.ensure_future(self._slot(connection, open_loop)) for connection in self.connections]
        if extra is not None:
            tasks.append(asyncio.ensure_future(extra))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            self.stats.unsent += len(self._open_queue)
            self._open_queue.clear()
            for connection in self.connections:
                connection.drop()
